"""Your own COCO data: training, focus refit and evaluation read a COCO file with its own classes
(category ids not 1..N, listed out of order), images of mixed sizes and images with no boxes; SNIPER
chips and FocusPixel labels work for any such set. References: pycocotools and plain-Python checks."""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch

from model.checkpoint import load_model, read_checkpoint, save_checkpoint
from model.config import load_config
from model.data import load_coco
from model.evaluate import coco_metrics, evaluate
from model.labels import focus_labels, valid_range_mask
from model.network import build_model
from model.shapes import CATEGORIES, generate
from model.train import build_positive_chips, chip_targets, main as train_main
from runtime.geometry import resized_image_size, scale_factor

torch.set_num_threads(2)

SMALL_SIZES = ((96, 128), (128, 80), (64, 192), (40, 56))
TINY_NET = {"widths": [8, 16, 16, 32, 32], "blocks": [1, 1, 1, 1, 1], "fpn_width": 16, "head_width": 16,
            "head_convs": 1, "focus_width": 16}
# Small scales so that the tiny images make few, small chips (the rules are the same at any scale).
SMALL_SCALES = {"chips": {"scales": [[-1, 128], [160, 256], [256, 384]], "valid_ranges": [[24, -1], [8, 40], [0, 20]],
                          "chip_size": 128},
                "inference": {"scales": [[96, 128], [160, 256], [256, 384]], "valid_ranges": [[20, None], [8, 40], [0, 20]]}}


def tiny_overrides():
    return {"network": TINY_NET, **SMALL_SCALES,
            "optim": {"batch_size": 2, "lr": 0.01, "warmup_steps": 2},
            "augment": {"hflip_prob": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0},
            "schedule": {"max_steps": 6, "num_workers": 0, "log_every": 1, "val_minutes": 1e6,
                         "checkpoint_minutes": 1e6, "time_budget_minutes": 10.0, "final_reserve_minutes": 0.0},
            "validation": {"images": 2, "scale_index": 1, "valid_range": [8, 40]},
            "mining": {"enabled": False}}


def file_classes(path):
    """The names in the label order this project uses (category-id order), read with pycocotools."""
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
    return [gt.cats[i]["name"] for i in sorted(gt.getCatIds())]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    train = generate(root / "train", count=10, seed=3, sizes=SMALL_SIZES)
    val = generate(root / "val", count=3, seed=4, sizes=SMALL_SIZES)
    # The training images in a folder of their own: --train-images must be honoured.
    shutil.move(str(root / "train" / "images"), str(root / "train_pictures"))
    return {"train": train, "train_images": root / "train_pictures", "val": val, "root": root}


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = run / "config.json"
    cfg.write_text(json.dumps(tiny_overrides()))
    torch.manual_seed(0)
    rc = train_main(["--config", str(cfg), "--run-dir", str(run), "--train-annotations", str(shapes["train"]),
                     "--train-images", str(shapes["train_images"]), "--val-annotations", str(shapes["val"])])
    assert rc == 0
    return run


def test_generated_set_has_what_the_tests_need(shapes):
    data = json.loads(shapes["train"].read_text())
    ids = [c["id"] for c in data["categories"]]
    assert ids != sorted(ids) and set(ids) != set(range(1, len(ids) + 1))
    sizes = {(im["height"], im["width"]) for im in data["images"]}
    assert len(sizes) >= 3
    with_boxes = {a["image_id"] for a in data["annotations"]}
    assert any(im["id"] not in with_boxes for im in data["images"])  # an image with no boxes


def test_training_takes_classes_from_the_coco_file(shapes, trained):
    state = read_checkpoint(trained / "final.pt")
    assert state["classes"] == file_classes(shapes["train"])
    assert sorted(state["classes"]) == sorted(name for _, name in CATEGORIES)
    model, config = load_model(trained / "final.pt")
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 96))
    assert out["scores"].shape[1] == 3
    assert state["step"] == 6


def test_training_refuses_val_classes_that_differ(shapes, tmp_path, capsys):
    other = json.loads(shapes["val"].read_text())
    other["categories"][0]["name"] = "ring"
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_overrides()))
    with pytest.raises(SystemExit):
        train_main(["--config", str(cfg), "--max-steps", "1", "--run-dir", str(tmp_path),
                    "--train-annotations", str(shapes["train"]),
                    "--train-images", str(shapes["train_images"]), "--val-annotations", str(path),
                    "--val-images", str(shapes["root"] / "val" / "images")])
    assert "ring" in capsys.readouterr().err


def test_coco_results_carry_the_files_category_ids(shapes):
    """Ground truth given back as detections must score AP 100 under pycocotools: only so if every
    0-based label is mapped back to the file's own category id."""
    coco = load_coco(shapes["val"])
    dets = {im["id"]: (coco.boxes[im["id"]], np.ones(len(coco.boxes[im["id"]]), np.float32), coco.labels[im["id"]])
            for im in coco.images}
    assert coco_metrics(coco, dets)["AP"] == pytest.approx(100.0)
    shifted = {k: (b, s, (l + 1) % 3) for k, (b, s, l) in dets.items()}
    assert coco_metrics(coco, shifted)["AP"] < 50


def test_evaluate_runs_on_the_users_file(shapes, trained, tmp_path):
    from model.evaluate import main as evaluate_main
    report = evaluate(trained / "final.pt", shapes["train"], shapes["train_images"], overrides=SMALL_SCALES["inference"],
                      progress=False)
    assert report["images"] == 10 and set(report["modes"]) == {"scale1", "scale2", "scale3", "pyramid"}
    # A checkpoint of other classes is refused with both lists named.
    config = load_config(overrides={"network": TINY_NET})
    save_checkpoint(tmp_path / "synthetic.pt", build_model(config, 5), config, ["car", "person", "sign", "crate", "bird"])
    with pytest.raises(ValueError, match="car.*same categories|same categories"):
        evaluate(tmp_path / "synthetic.pt", shapes["val"], progress=False)
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", str(tmp_path / "synthetic.pt"), "--val-annotations", str(shapes["val"])])


def test_chips_cover_every_box_that_fits_any_dataset(shapes):
    """SNIPER: at every scale, every box valid there and at most chip_size - grid_stride wide and high
    (so that a chip origin on the grid can hold it) lies inside one of that image's chips (brute force
    over the chips); images with no box get at most the whole-image chip."""
    config = load_config(overrides=tiny_overrides())
    ch = config["chips"]
    coco = load_coco(shapes["train"], shapes["train_images"])
    chips = build_positive_chips(coco, config)
    for idx, info in enumerate(coco.images):
        boxes = coco.boxes[info["id"]].astype(np.float64)
        for si, vr in enumerate(ch["valid_ranges"]):
            mine = [c for c in chips if c.image_index == idx and c.scale_index == si]
            f = mine[0].factor if mine else None
            for b in boxes[valid_range_mask(boxes, vr)]:
                f = scale_factor(info["height"], info["width"], ch["scales"][si])
                rh, rw = resized_image_size(info["height"], info["width"], f)
                r = np.clip(b * f, 0, [rw, rh, rw, rh])
                fits = ch["chip_size"] - ch["grid_stride"]
                if r[2] - r[0] > fits or r[3] - r[1] > fits:
                    continue
                assert any(c.x0 <= r[0] and r[2] <= c.x0 + c.size and c.y0 <= r[1] and r[3] <= c.y0 + c.size
                           for c in mine), (info, si, b)
            if len(boxes) == 0:
                assert len(mine) <= 1


def test_chip_targets_of_an_image_without_boxes(shapes):
    config = load_config(overrides=tiny_overrides())
    coco = load_coco(shapes["train"], shapes["train_images"])
    empty = [i for i, im in enumerate(coco.images) if len(coco.boxes[im["id"]]) == 0]
    assert empty
    chips = [c for c in build_positive_chips(coco, config) if c.image_index == empty[0]]
    assert chips  # scale 1's whole-image chip still trains the focus head on the inference view
    t = chip_targets(coco, chips[0], config)
    assert t["heatmap"].max() == 0 and t["reg_weight"].sum() == 0 and (t["focus_labels"] <= 0).all()
    assert t["heatmap"].shape[0] == 3


def test_focus_labels_for_any_box_size_mix():
    """Boxes from sub-pixel to larger than the chip, partly outside it, degenerate ones: labels follow
    the paper's rule cell by cell (plain-Python reference)."""
    rng = np.random.default_rng(0)
    boxes = []
    for s in (0.0, 0.5, 3, 5, 6, 30, 63.9, 64, 70, 89, 90, 300, 2000):
        x, y = rng.uniform(-50, 200, 2)
        boxes.append([x, y, x + s, y + s * rng.uniform(0.5, 2)])
    boxes = np.array(boxes)
    got = focus_labels(boxes, (200, 260), 16, 5, 64, 90)
    want = np.zeros((13, 17), np.int64)
    for gy in range(13):
        for gx in range(17):
            lab = 0
            for b in boxes:
                s = np.sqrt(max(b[2] - b[0], 0) * max(b[3] - b[1], 0))
                # IoU(cell, box) > 0: an intersection of positive area (a degenerate box has none)
                overlaps = (min(b[2], gx * 16 + 16) - max(b[0], gx * 16) > 0
                            and min(b[3], gy * 16 + 16) - max(b[1], gy * 16) > 0)
                if not overlaps:
                    continue
                if 5 < s < 64:
                    lab = 1
                elif (s < 5 or 64 < s < 90) and lab == 0:
                    lab = -1
            want[gy, gx] = lab
    np.testing.assert_array_equal(got, want)


def test_focus_refit_reads_the_users_coco_file(shapes, trained, tmp_path):
    from model.focus_refit import main as refit_main
    cfg_inference = SMALL_SCALES["inference"]
    state = read_checkpoint(trained / "final.pt")
    config = dict(state["config"])
    config["inference"] = {**config["inference"], **cfg_inference}
    model, _ = load_model(trained / "final.pt")
    save_checkpoint(tmp_path / "in.pt", model, config, state["classes"])
    rc = refit_main(["--checkpoint", str(tmp_path / "in.pt"), "--out", str(tmp_path / "out.pt"),
                     "--train-annotations", str(shapes["train"]), "--train-images", str(shapes["train_images"]),
                     "--holdout", "0.3", "--epochs", "2", "--quiet"])
    assert rc == 0
    out = read_checkpoint(tmp_path / "out.pt")
    assert out["classes"] == state["classes"] and out["focus_refit"]["images"] == 10
