"""model.focus_refit: the held-out metric against NumPy, and a refit on a tiny split that changes the
focus head only."""
import json

import numpy as np
import pytest
import torch

from model.checkpoint import load_model, save_checkpoint
from model.config import load_config
from model.focus_loss import object_cells, object_loss
from model.focus_refit import cell_weights, coverage_at_recall, main, map_labels, refit
from model.labels import FOCUS_IGNORE, focus_labels, focus_positive_spans
from model.network import build_model
from model.synth import generate_split
from model_fixtures import TINY_NET

torch.set_num_threads(2)


class LogitIsFeature(torch.nn.Module):
    """A 'head' whose foreground logit is the first feature channel (background logit 0)."""

    def forward(self, f):
        return torch.stack([torch.zeros_like(f[:, 0]), f[:, 0]], 1)


def test_coverage_at_recall_matches_numpy():
    """Threshold = the (1 - recall) quantile of each object's best cell; coverage = labelled cells at or
    above it."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(5, 1, 9, 11)).astype(np.float32)
    labels = rng.choice([0, 0, 0, FOCUS_IGNORE], size=(5, 9, 11))
    objects = []
    for i in range(5):
        for _ in range(6):
            y0, x0 = rng.integers(0, 8), rng.integers(0, 10)
            y1, x1 = y0 + rng.integers(1, 3), x0 + rng.integers(1, 3)
            labels[i, y0:y1, x0:x1] = 1
            feats[i, 0, y0:y1, x0:x1] += rng.uniform(0, 2)  # objects score higher, but not all of them
            objects.append((i, y0, y1, x0, x1))
    data = [{"features": torch.from_numpy(feats).half(), "labels": torch.from_numpy(labels),
             "objects": torch.tensor(objects)}]
    got = coverage_at_recall(LogitIsFeature(), data, recall=0.9, batch=2)[0]
    p = 1.0 / (1.0 + np.exp(-feats[:, 0].astype(np.float16).astype(np.float64)))
    best = np.array([p[i, y0:y1, x0:x1].max() for i, y0, y1, x0, x1 in objects])
    t = np.quantile(best, 0.1)
    want = np.mean(p[labels != FOCUS_IGNORE] >= t - 1e-6)
    assert got == pytest.approx(want, abs=1.5 / (labels != FOCUS_IGNORE).sum())
    assert 0 < got < 1


def test_cell_weights_give_each_object_the_same_total():
    labels = torch.zeros(1, 6, 6, dtype=torch.int64)
    labels[0, 0, 0] = 1                   # a one-cell object
    labels[0, 2:6, 2:6] = 1               # a sixteen-cell object
    labels[0, 0, 5] = FOCUS_IGNORE
    objects = torch.tensor([[0, 0, 1, 0, 1], [0, 2, 6, 2, 6]])
    w = cell_weights(labels, objects, balance=1.0)
    assert w[0, 0, 5] == 0 and w[0, 1, 1] == 1                             # ignored, negative
    assert float(w[0, 0, 0]) == pytest.approx(float(w[0, 2:6, 2:6].sum()))  # same total per object
    assert float(w[labels == 1].mean()) == pytest.approx(1.0)
    torch.testing.assert_close(cell_weights(labels, objects, balance=0.0), (labels != FOCUS_IGNORE).float())


def test_positive_spans_cover_exactly_the_positive_cells():
    rng = np.random.default_rng(3)
    for _ in range(50):
        xy = rng.uniform(-20, 200, size=(8, 2))
        wh = rng.uniform(0, 120, size=(8, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = focus_labels(boxes, (150, 170), 16, 5, 64, 90)
        union = np.zeros_like(labels, bool)
        for y0, y1, x0, x1 in focus_positive_spans(boxes, (150, 170), 16, 5, 64):
            union[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(union, labels == 1)


def test_map_labels_pads_with_ignore():
    boxes = np.array([[10, 10, 40, 30], [100, 20, 300, 220]], np.float32)
    out = map_labels(boxes, 0.5, (70, 100), (6, 8), load_config())
    want = focus_labels(boxes * 0.5, (70, 100), 16, 5, 64, 90)
    assert out.shape == (6, 8)
    np.testing.assert_array_equal(out[:5, :7], want)
    assert (out[5, :] == FOCUS_IGNORE).all() and (out[:, 7] == FOCUS_IGNORE).all()


@pytest.fixture(scope="module")
def refit_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("refit")
    generate_split(root / "train", seed=21, count=6, split="custom")
    config = load_config(overrides={"network": TINY_NET})
    torch.manual_seed(0)
    save_checkpoint(root / "in.pt", build_model(config, 5), config, ["car", "person", "sign", "crate", "bird"], step=3)
    rc = main(["--checkpoint", str(root / "in.pt"), "--out", str(root / "out.pt"), "--annotations",
               str(root / "train" / "annotations.json"), "--holdout", "0.34", "--epochs", "3", "--lr", "0.01",
               "--quiet"])
    assert rc == 0
    return root


def test_refit_changes_the_focus_head_only(refit_run):
    before = torch.load(refit_run / "in.pt", weights_only=False)
    after = torch.load(refit_run / "out.pt", weights_only=False)
    changed = {k for k in before["model"] if not torch.equal(before["model"][k], after["model"][k])}
    # (An untrained tiny net may keep its initial head if no epoch beats it on the held-out images.)
    assert after["focus_refit"]["best_epoch"] == 0 or changed
    assert all(k.startswith(("focus_conv.", "focus_out.")) for k in changed), changed
    assert after["step"] == 3 and after["focus_refit"]["images"] == 6 and after["focus_refit"]["held_out"] == 2

    m0, _ = load_model(refit_run / "in.pt")
    m1, _ = load_model(refit_run / "out.pt")
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        o0, o1 = m0(x), m1(x)
    assert torch.equal(o0["scores"], o1["scores"]) and torch.equal(o0["ltrb"], o1["ltrb"])
    assert after["focus_refit"]["epochs_run"] == 3


def test_refit_learns_a_map_the_features_determine():
    """Labels = (feature 0 > 0.5): the refit head must rank positives first, far better than at start."""
    torch.manual_seed(0)
    model = build_model(load_config(overrides={"network": TINY_NET}), 5)

    def split(n):
        f = torch.randn(n, 16, 8, 10)
        lab = (f[:, 0] > 0.5).long()
        lab[:, :, -1] = FOCUS_IGNORE
        objects = torch.nonzero(lab == 1)  # every positive cell its own object
        objects = torch.cat([objects, objects[:, 1:2] + 1, objects[:, 2:3], objects[:, 2:3] + 1], 1)[:, [0, 1, 3, 4, 5]]
        return {"features": f.half(), "labels": lab, "objects": objects, "weights": cell_weights(lab, objects, 1.0),
                "perm": torch.randperm(n)}

    train, held = [split(64)], [split(16)]
    positives = float((held[0]["labels"] == 1).sum()) / float((held[0]["labels"] != FOCUS_IGNORE).sum())
    history = refit(model, train, held, epochs=15, minutes=5.0, lr=0.02, batch=8, progress=False)
    before, after = history["epoch0_coverage"][0], history["best_coverage"][0]
    assert after < before
    assert after < 0.95 * positives + 0.05, (before, after, positives)  # close to the ideal: the positives alone
    # The model's own head is left at the kept epoch.
    assert coverage_at_recall(model.focus_logits, held)[0] == pytest.approx(after)


def test_object_loss_matches_numpy():
    """-log p at each object's best cell (objects of the batch's maps only), mean over objects, plus the
    mean -log(1 - p) of the negative cells: a float64 NumPy computation from the definition."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 2, 7, 9))
    labels = rng.choice([0, 0, FOCUS_IGNORE], size=(3, 7, 9))
    objects = []
    for i in range(5):  # data maps 0..4; the batch holds maps 4, 1, 2
        for _ in range(3):
            y0, x0 = rng.integers(0, 6), rng.integers(0, 8)
            objects.append((i, y0, y0 + rng.integers(1, 3), x0, x0 + rng.integers(1, 3)))
    perm = torch.tensor([4, 1, 2])
    for b, i in enumerate(perm.tolist()):
        for m, y0, y1, x0, x1 in objects:
            if m == i:
                labels[b, y0:y1, x0:x1] = 1
    got = object_loss(torch.from_numpy(logits), torch.from_numpy(labels), object_cells(torch.tensor(objects)), perm)
    p = 1.0 / (1.0 + np.exp(-(logits[:, 1] - logits[:, 0])))
    pos = [-np.log(max(p[b, y0:y1, x0:x1].max() for b in [perm.tolist().index(m)]))
           for m, y0, y1, x0, x1 in objects if m in perm.tolist()]
    want = np.mean(pos) + np.mean(-np.log(1.0 - p[labels == 0]))
    assert got.item() == pytest.approx(want, rel=1e-9)
    # No object in the batch: the negative term alone.
    none = object_loss(torch.from_numpy(logits), torch.from_numpy(labels), object_cells(torch.tensor(objects)),
                       torch.tensor([7, 5, 6]))
    assert none.item() == pytest.approx(np.mean(-np.log(1.0 - p[labels == 0])), rel=1e-9)


def test_object_loss_refit_lights_one_cell_per_object():
    """Objects of 2 x 2 cells of which only one cell carries a signal in the features: the per-cell loss
    must light all four cells to be right, the object loss only the one; at full recall the object loss's
    head covers fewer cells."""
    def split(n, seed):
        g = torch.Generator().manual_seed(seed)
        f = torch.randn(n, 16, 8, 10, generator=g) * 0.3
        lab = torch.zeros(n, 8, 10, dtype=torch.long)
        objects = []
        for i in range(n):
            for y0, x0 in ((1, 1), (4, 6)):
                lab[i, y0:y0 + 2, x0:x0 + 2] = 1
                f[i, 0, y0, x0] += 3.0  # only the top-left cell shows the object
                objects.append((i, y0, y0 + 2, x0, x0 + 2))
        objects = torch.tensor(objects)
        return {"features": f.half(), "labels": lab, "objects": objects, "weights": cell_weights(lab, objects, 1.0),
                "perm": torch.randperm(n)}

    covered = {}
    for loss in ("cells", "objects"):
        torch.manual_seed(0)
        model = build_model(load_config(overrides={"network": TINY_NET}), 5)
        history = refit(model, [split(48, 1)], [split(16, 2)], epochs=12, minutes=5.0, lr=0.02, batch=8,
                        progress=False, loss=loss, recall=1.0)
        covered[loss] = history["best_coverage"][0]
    # The ideal: 2 lit cells of 80 = 0.025; lighting whole objects: 8 of 80 = 0.1.
    assert covered["objects"] < 0.06 < covered["cells"], covered


def test_refit_records_its_loss_and_recall(refit_run, tmp_path):
    rc = main(["--checkpoint", str(refit_run / "in.pt"), "--out", str(tmp_path / "o.pt"), "--annotations",
               str(refit_run / "train" / "annotations.json"), "--holdout", "0.34", "--epochs", "1", "--quiet",
               "--loss", "objects", "--recall", "0.99"])
    assert rc == 0
    record = torch.load(tmp_path / "o.pt", weights_only=False)["focus_refit"]
    assert record["loss"] == "objects" and record["held_out_coverage_at_recall"]["recall"] == 0.99
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(refit_run / "in.pt"), "--recall", "1.5"])


def test_refit_refuses_a_holdout_that_leaves_nothing(refit_run):
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(refit_run / "in.pt"), "--holdout", "1.5"])


def test_set_focus_features_starts_from_the_same_head(tmp_path):
    """Widening the head to p4+p3max keeps its outputs (zero weights on the new channels), records the
    choice in the config, and a checkpoint saved with it loads back into the same network."""
    from model.focus_refit import set_focus_features
    config = load_config(overrides={"network": TINY_NET})
    torch.manual_seed(0)
    model = build_model(config, 5).deploy()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)["focus"]
        set_focus_features(model, config, "p4+p3max")
        after = model(x)["focus"]
    assert model.focus_conv.in_channels == 2 * TINY_NET["fpn_width"]
    assert config["network"]["focus_features"] == "p4+p3max"
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    save_checkpoint(tmp_path / "wide.pt", model, config, ["a", "b", "c", "d", "e"], step=1)
    loaded, _ = load_model(tmp_path / "wide.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["focus"], after, rtol=0, atol=0)
    with pytest.raises(ValueError, match="focus_features"):
        set_focus_features(model, config, "p2")
    with pytest.raises(ValueError, match="fewer channels"):
        set_focus_features(model, config, "p4")


def test_transition_refit_adds_one_head_per_transition_and_keeps_the_rest(refit_run, tmp_path):
    """--transition-heads: the refit checkpoint gains transition_heads.0/1 (their specs and label bounds
    in its config), every other weight (the paper's head included) is unchanged; --transitions 2 on it
    then refits head 2 only."""
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"heads": [
        {"b_original": 75, "width": 8, "dilations": [1, 2], "reduce": True},
        {"b_original": 75, "width": TINY_NET["focus_width"], "dilations": [1], "reduce": False, "init": "paper"}]}))
    common = ["--annotations", str(refit_run / "train" / "annotations.json"), "--holdout", "0.34",
              "--epochs", "2", "--lr", "0.01", "--quiet"]
    assert main(["--checkpoint", str(refit_run / "in.pt"), "--out", str(tmp_path / "t.pt"),
                 "--transition-heads", str(heads), *common]) == 0
    before = torch.load(refit_run / "in.pt", weights_only=True)
    after = torch.load(tmp_path / "t.pt", weights_only=True)
    new = set(after["model"]) - set(before["model"])
    assert new and all(k.startswith(("transition_heads.0.", "transition_heads.1.")) for k in new), new
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert after["config"]["focus_labels"]["transitions"] == [{"b_original": 75.0}, {"b_original": 75.0}]
    assert [h["dilations"] for h in after["config"]["network"]["transition_heads"]] == [[1, 2], [1]]
    record = after["transition_refit"]["transitions"]
    assert set(record) == {"1", "2"} and all(0 <= r["after"] <= r["before"] for r in record.values())

    assert main(["--checkpoint", str(tmp_path / "t.pt"), "--out", str(tmp_path / "t2.pt"), "--transitions", "2",
                 *common]) == 0
    again = torch.load(tmp_path / "t2.pt", weights_only=True)
    assert all(torch.equal(after["model"][k], again["model"][k]) for k in after["model"]
               if not k.startswith("transition_heads.1."))
    assert set(again["transition_refit"]["transitions"]) == {"2"} and "previous" in again["transition_refit"]
    model, _ = load_model(tmp_path / "t2.pt")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96))["focus"].shape == (1, 4, 4, 6)


def test_transitions_without_heads_and_bad_numbers_are_named(refit_run, tmp_path, capsys):
    common = ["--annotations", str(refit_run / "train" / "annotations.json"), "--quiet"]
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(refit_run / "in.pt"), "--out", str(tmp_path / "x.pt"), "--transitions", "1", *common])
    assert "no transition heads" in capsys.readouterr().err
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"heads": [None, None]}))
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(refit_run / "in.pt"), "--out", str(tmp_path / "x.pt"), "--transition-heads",
              str(heads), "--transitions", "3", *common])
    assert "expected numbers in 1..2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(refit_run / "in.pt"), "--out", str(tmp_path / "x.pt"), "--transition-heads",
              str(heads), "--transitions", "one", *common])
    assert "--transitions: expected numbers in 1..2, got one" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_head_from_puts_another_refits_head_on_one_transition(refit_run, tmp_path):
    """--head-from 2=<refit>: transition 2's channel is the refit's paper head (its own forward is the
    reference), transition 1 and the detections stay the base checkpoint's."""
    base, _ = load_model(refit_run / "in.pt")
    other, _ = load_model(refit_run / "out.pt")
    other.focus_out.bias.data += 0.5  # (a change of the head that must show up in the composed channel)
    torch.save({**torch.load(refit_run / "out.pt", weights_only=False), "model": other.state_dict()}, tmp_path / "o.pt")
    rc = main(["--checkpoint", str(refit_run / "in.pt"), "--out", str(tmp_path / "c.pt"),
               "--head-from", f"2={tmp_path / 'o.pt'}"])
    assert rc == 0
    composed, config = load_model(tmp_path / "c.pt")
    assert config["network"]["transition_heads"][0] is None and config["focus_labels"]["transitions"] == [None, None]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        c, b, o = composed(x), base(x), other(x)
    assert c["focus"].shape[1] == 3
    torch.testing.assert_close(c["focus"][:, 2], o["focus"][:, 1])
    torch.testing.assert_close(c["focus"][:, :2], b["focus"])
    assert torch.equal(c["scores"], b["scores"]) and torch.equal(c["ltrb"], b["ltrb"])
    record = torch.load(tmp_path / "c.pt", weights_only=False)["transition_heads_from"]
    assert record["heads"]["2"]["checkpoint"] == str(tmp_path / "o.pt")


def test_head_from_refuses_another_trunk_and_bad_transitions(refit_run, tmp_path, capsys):
    config = load_config(overrides={"network": TINY_NET})
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "other.pt", build_model(config, 5), config, ["car", "person", "sign", "crate", "bird"])
    for entry, message in ((f"2={tmp_path / 'other.pt'}", "not a refit of --checkpoint's trunk"),
                           (f"3={refit_run / 'out.pt'}", "K in 1..2"), ("2", "K in 1..2"),
                           (f"1={tmp_path / 'missing.pt'}", "missing.pt")):
        with pytest.raises(SystemExit):
            main(["--checkpoint", str(refit_run / "in.pt"), "--out", str(tmp_path / "c.pt"), "--head-from", entry])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "c.pt").exists()
