"""Training smoke test on a tiny generated split, checkpoint round trip, resume, corrupt checkpoints."""
import dataclasses
import shutil

import numpy as np
import pytest
import torch

from model.chips import Chip
from model.checkpoint import load_model, save_checkpoint
from model.config import load_config
from model.data import load_coco
from model.network import AutoFocusNet, build_model
from model.synth import generate_split
from model.train import build_positive_chips, chip_targets, collate, compute_losses, mine_negative_chips, train

torch.set_num_threads(2)

TINY_NET = {"widths": [8, 16, 16, 32, 32], "blocks": [1, 1, 1, 1, 1], "fpn_width": 16, "head_width": 16,
            "head_convs": 1, "focus_width": 16}


def tiny_config(**schedule):
    sched = {"max_steps": 30, "num_workers": 0, "log_every": 1, "val_minutes": 1e6, "checkpoint_minutes": 1e6,
             "time_budget_minutes": 10.0, "final_reserve_minutes": 0.0}
    sched.update(schedule)
    return load_config(overrides={
        "network": TINY_NET,
        "optim": {"batch_size": 2, "lr": 0.01, "warmup_steps": 3},
        "augment": {"hflip_prob": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0},
        "schedule": sched,
        "validation": {"images": 2},
        "mining": {"images": 2, "score_threshold": 0.0},
    })


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    generate_split(root / "train", seed=11, count=4, split="custom")
    generate_split(root / "val", seed=12, count=2, split="custom")
    return load_coco(root / "train" / "annotations.json"), load_coco(root / "val" / "annotations.json")


@pytest.fixture(scope="module")
def trained(tiny_split, tmp_path_factory):
    train_set, val_set = tiny_split
    run_dir = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    # One image, no augmentation: the few chips repeat, so the loss must fall clearly within 30 steps.
    one = dataclasses.replace(train_set, images=train_set.images[:1])
    summary = train(tiny_config(), run_dir, train_set=one, val_set=val_set, progress_bar=False)
    return summary, run_dir


def test_training_loss_falls(trained):
    summary, run_dir = trained
    assert summary["steps"] == 30
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
    for key in ("heatmap", "giou", "focus"):
        assert all(key in h for h in summary["history"] if "loss" in h)
    assert (run_dir / "final.pt").is_file() and (run_dir / "last.pt").is_file()
    assert {"ap50", "focus_recall_s1", "focus_recall_s2"} <= set(summary["final_val"])


def test_final_checkpoint_loads_and_meets_contract(trained):
    _, run_dir = trained
    model, config = load_model(run_dir / "final.pt")
    assert config["classes"] == ["car", "person", "sign", "crate", "bird"]
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out["scores"].shape == (1, 5, 8, 12) and out["focus"].shape == (1, 2, 4, 6)


def test_resume_continues_from_last(tiny_split, trained, tmp_path):
    train_set, val_set = tiny_split
    _, run_dir = trained
    shutil.copy(run_dir / "last.pt", tmp_path / "last.pt")
    summary = train(tiny_config(max_steps=33), tmp_path, resume=True, train_set=train_set, val_set=val_set,
                    progress_bar=False)
    assert summary["steps"] == 33
    steps = [h["step"] for h in summary["history"] if "loss" in h]
    assert steps[:30] == list(range(1, 31)) and steps[30:] == [31, 32, 33]


def test_checkpoint_round_trip_same_outputs(tmp_path):
    config = tiny_config()
    torch.manual_seed(1)
    model = build_model(config, 3)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(tmp_path / "m.pt", model, config, ["a", "b", "c"], step=7)
    loaded, cfg = load_model(tmp_path / "m.pt")
    x = torch.randn(2, 3, 96, 64)
    model.deploy()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for k in ("scores", "ltrb", "focus"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert cfg["classes"] == ["a", "b", "c"] and cfg["network"] == config["network"]


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_model(bad)
    # A real checkpoint cut in half.
    config = tiny_config()
    save_checkpoint(tmp_path / "full.pt", build_model(config, 2), config, ["x", "y"])
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="half.pt"):
        load_model(tmp_path / "half.pt")
    # A readable file that is not one of ours.
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        load_model(tmp_path / "other.pt")
    # Weights of another architecture.
    other = dict(config)
    other["network"] = dict(config["network"], fpn_width=24)
    save_checkpoint(tmp_path / "arch.pt", build_model(other, 2), config, ["x", "y"])
    with pytest.raises(ValueError, match="arch.pt"):
        load_model(tmp_path / "arch.pt")


def test_chip_targets_ignore_boxes_outside_the_valid_range(tiny_split):
    train_set, _ = tiny_split
    config = tiny_config()
    chips = build_positive_chips(train_set, config)
    assert chips and all(not c.negative for c in chips)
    for chip in chips[:6]:
        image_id = train_set.images[chip.image_index]["id"]
        boxes = train_set.boxes[image_id]
        lo, hi = config["chips"]["valid_ranges"][chip.scale_index]
        hi = np.inf if hi < 0 else hi
        s = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        t = chip_targets(train_set, chip, config)
        # Every regressed cell's target is a (clipped) valid box; no invalid box is ever a target.
        scaled = boxes * chip.factor - np.array([chip.x0, chip.y0, chip.x0, chip.y0])
        targets = t["box_target"][:, t["reg_weight"] > 0].T
        for tb in targets:
            owner = np.argmin(np.abs(np.clip(scaled, 0, chip.size) - tb).sum(1))
            assert lo <= s[owner] <= hi
        # Peaks only for valid boxes: at most as many as the valid boxes.
        assert (t["heatmap"] == 1).sum() <= ((s >= lo) & (s <= hi)).sum()
        assert t["focus_labels"].shape == (32, 32)


def test_negative_mining_returns_negative_chips(tiny_split):
    train_set, _ = tiny_split
    config = tiny_config()
    torch.manual_seed(0)
    model = AutoFocusNet(5, widths=(8, 16, 16, 32, 32), blocks=(1, 1, 1, 1, 1), fpn_width=16, head_width=16,
                         head_convs=1, focus_width=16, prior_prob=0.5)  # untrained: everything scores ~0.5
    positives = build_positive_chips(train_set, config)
    negatives = mine_negative_chips(model, train_set, positives, config, seed=0)
    assert negatives, "an untrained model's detections are false positives"
    assert all(isinstance(c, Chip) and c.negative and c.size == 512 for c in negatives)
    per = {}
    for c in negatives:
        per[(c.image_index, c.scale_index)] = per.get((c.image_index, c.scale_index), 0) + 1
    assert max(per.values()) <= config["mining"]["max_chips_per_image_scale"]


def test_flipped_chip_targets_mirror_the_unflipped_ones(tiny_split):
    train_set, _ = tiny_split
    config = tiny_config()
    for chip in build_positive_chips(train_set, config)[:6]:
        a = chip_targets(train_set, chip, config, flip=False)
        b = chip_targets(train_set, chip, config, flip=True)
        np.testing.assert_array_equal(b["focus_labels"], a["focus_labels"][:, ::-1])
        np.testing.assert_array_equal(b["cls_weight"], a["cls_weight"][:, :, ::-1])
        # Same number of peaks per class, and the same regressed box sizes.
        np.testing.assert_array_equal((b["heatmap"] == 1).sum((1, 2)), (a["heatmap"] == 1).sum((1, 2)))
        wa = a["box_target"][2] - a["box_target"][0]
        wb = b["box_target"][2] - b["box_target"][0]
        np.testing.assert_allclose(np.unique(wa[a["reg_weight"] > 0].round(2)),
                                   np.unique(wb[b["reg_weight"] > 0].round(2)), atol=0.011)


def _best_cell_terms(train_set, chip, p: np.ndarray, a: float, b: float) -> list:
    """-log p at the best cell of each box of the chip with a < sqrt(area) < b (chip px, float64), over the
    32 x 32 stride-16 cells it overlaps: the objects loss's positive terms, computed independently."""
    image_id = train_set.images[chip.image_index]["id"]
    boxes = train_set.boxes[image_id].astype(np.float64) * chip.factor - [chip.x0, chip.y0, chip.x0, chip.y0]
    terms = []
    for x1, y1, x2, y2 in boxes:
        if not a < np.sqrt((x2 - x1) * (y2 - y1)) < b:
            continue
        cols = [j for j in range(32) if j * 16 < x2 and (j + 1) * 16 > x1]
        rows = [j for j in range(32) if j * 16 < y2 and (j + 1) * 16 > y1]
        if rows and cols:
            terms.append(-np.log(p[np.ix_(rows, cols)].max()))
    return terms


def test_objects_focus_loss_from_chips_matches_numpy(tiny_split):
    """focus_loss "objects": every FocusPixel-positive box of each chip (sized as the labels size it) gets
    -log p at its best cell, over the batch's boxes, plus the mean -log(1 - p) of the negative cells; a
    float64 NumPy computation from the chips' scaled boxes, with the ragged batch padded by collate."""
    train_set, _ = tiny_split
    config = tiny_config()
    config["loss"]["focus_loss"] = "objects"
    chips = build_positive_chips(train_set, config)[:4]
    items = [chip_targets(train_set, chip, config) for chip in chips]
    counts = [len(t["focus_objects"]) for t in items]
    assert sum(counts) > 0 and len(set(counts)) > 1, "the test needs chips with different numbers of objects"
    images = torch.zeros(len(items), 3, 8, 8)
    _, targets = collate([(img, {k: torch.from_numpy(v) for k, v in t.items()}) for img, t in zip(images, items)])
    assert targets["focus_objects"].shape == (len(items), max(counts), 4)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(items), 2, 32, 32))
    outputs = {"cls_logits": torch.zeros_like(targets["heatmap"]), "ltrb": torch.zeros(len(items), 4, 64, 64),
               "focus_logits": torch.from_numpy(logits)}
    got = compute_losses(outputs, targets, config)["focus"].item()

    p = 1.0 / (1.0 + np.exp(-(logits[:, 1] - logits[:, 0])))
    a, b = config["focus_labels"]["a"], config["focus_labels"]["b"]
    best, negatives = [], []
    for i, chip in enumerate(chips):
        best += _best_cell_terms(train_set, chip, p[i], a, b)
        negatives.append(-np.log(1.0 - p[i][items[i]["focus_labels"] == 0]))
    assert len(best) == sum(counts)
    want = np.mean(best) + np.mean(np.concatenate(negatives))
    assert got == pytest.approx(want, rel=1e-9)


def test_training_with_objects_focus_loss_runs_and_rejects_unknown_losses(tiny_split, tmp_path):
    train_set, val_set = tiny_split
    config = tiny_config(max_steps=4)
    config["loss"]["focus_loss"] = "objects"
    summary = train(config, tmp_path, train_set=train_set, val_set=val_set, progress_bar=False)
    focus = [h["focus"] for h in summary["history"] if "focus" in h]
    assert len(focus) == 4 and all(np.isfinite(focus)) and max(focus) > 0
    with pytest.raises(ValueError, match="focus_loss"):
        load_config(overrides={"loss": {"focus_loss": "cell"}})


def _transition_config():
    config = tiny_config(max_steps=4)
    config["loss"]["focus_loss"] = "objects"
    config["focus_labels"]["transitions"] = [{"b_original": 40.0}, {"b_original": 75.0}]
    return config


def test_transition_heads_loss_from_chips_matches_numpy(tiny_split):
    """Per-transition heads (issue 21): a chip of scale s is labelled for transition s's own head (objects with
    a < sqrt(area) < b_original x factor, in chip px) and only that head's loss sees it; chips of the last scale
    train none. Each head's loss against a float64 NumPy computation from the chips' scaled boxes."""
    train_set, _ = tiny_split
    config = _transition_config()
    chips = build_positive_chips(train_set, config)
    by_scale = {s: [c for c in chips if c.scale_index == s][:2] for s in range(3)}
    assert all(by_scale.values()), "the test needs chips of every scale"
    chips = [c for s in range(3) for c in by_scale[s]]
    items = [chip_targets(train_set, chip, config) for chip in chips]
    for chip, t in zip(chips, items):
        assert int(t["transition_index"]) == (chip.scale_index if chip.scale_index < 2 else -1)
        if chip.scale_index == 2:
            assert (t["transition_labels"] == -1).all() and len(t["transition_objects"]) == 0
    images = torch.zeros(len(items), 3, 8, 8)
    _, targets = collate([(img, {k: torch.from_numpy(v) for k, v in t.items()}) for img, t in zip(images, items)])
    rng = np.random.default_rng(1)
    logits = {k: rng.normal(size=(len(items), 2, 32, 32)) for k in (0, 1)}
    outputs = {"cls_logits": torch.zeros_like(targets["heatmap"]), "ltrb": torch.zeros(len(items), 4, 64, 64),
               "focus_logits": torch.zeros(len(items), 2, 32, 32),
               "transition_logits": {k: torch.from_numpy(v) for k, v in logits.items()}}
    got = compute_losses(outputs, targets, config)["transition"].item()

    a = config["focus_labels"]["a"]
    want = 0.0
    for k in (0, 1):
        p = 1.0 / (1.0 + np.exp(-(logits[k][:, 1] - logits[k][:, 0])))
        best, negatives = [], []
        for i, chip in enumerate(chips):
            if chip.scale_index != k:
                continue
            b = config["focus_labels"]["transitions"][k]["b_original"] * chip.factor
            terms = _best_cell_terms(train_set, chip, p[i], a, b)
            assert len(terms) == len(items[i]["transition_objects"])
            best += terms
            negatives.append(-np.log(1.0 - p[i][items[i]["transition_labels"] == 0]))
        want += (np.mean(best) if best else 0.0) + np.mean(np.concatenate(negatives))
    assert got == pytest.approx(want, rel=1e-9)


def test_training_with_transition_heads_trains_them(tiny_split, tmp_path):
    """model.train with a config that has transition heads (as model.focus_refit --transition-heads writes
    it) trains them with the trunk: their loss is logged and reaches both, and the checkpoint carries them."""
    train_set, val_set = tiny_split
    config = _transition_config()
    config["network"]["transition_heads"] = [{"width": 8, "dilations": [1, 2], "reduce": True},
                                             {"width": 8, "dilations": [1], "reduce": True}]
    torch.manual_seed(0)
    summary = train(config, tmp_path, train_set=train_set, val_set=val_set, progress_bar=False)
    losses = [h["transition"] for h in summary["history"] if "transition" in h]
    assert len(losses) == 4 and all(np.isfinite(losses)) and max(losses) > 0
    model, _ = load_model(tmp_path / "final.pt")
    assert len(model.transition_heads) == 2
    # The transition loss alone has gradients in the heads and in the trunk (joint training, not a refit).
    positives = build_positive_chips(train_set, config)
    chips = [c for s in (0, 1) for c in [c for c in positives if c.scale_index == s][:2]]
    items = [chip_targets(train_set, chip, config) for chip in chips]
    _, targets = collate([(torch.zeros(1), {k: torch.from_numpy(v) for k, v in t.items()}) for t in items])
    model.train()
    model.zero_grad()
    compute_losses(model(torch.rand(len(items), 3, 512, 512), export=False), targets, config)["transition"].backward()
    for module in (model.transition_heads[0], model.transition_heads[1], model.backbone):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), module


def test_config_transition_heads_and_labels_must_agree():
    heads = [{"width": 8, "dilations": [1, 2], "reduce": True}, None]
    config = load_config(overrides={"network": {"transition_heads": heads},
                                    "focus_labels": {"transitions": [{"b_original": 75.0}, None]}})
    assert config["network"]["transition_heads"] == heads
    assert load_config()["network"]["transition_heads"] == [] and load_config()["focus_labels"]["transitions"] == []
    with pytest.raises(ValueError, match="must name the same transitions"):
        load_config(overrides={"network": {"transition_heads": heads},
                               "focus_labels": {"transitions": [None, {"b_original": 75.0}]}})
    with pytest.raises(ValueError, match="b_original"):
        load_config(overrides={"network": {"transition_heads": heads}, "focus_labels": {"transitions": [{"b": 3}, None]}})
