"""AP in one scale's SNIP valid range (model.evaluate.coco_eval(valid_range=...)), which training's
quick_validate reports: against AP values worked out by hand from COCO's 101-point rule, and
quick_validate on the shipped model against pycocotools run here on its own."""
import contextlib
import io
import json

import cv2
import numpy as np
import pytest
import torch

from model.checkpoint import load_model
from model.data import load_coco
from model.evaluate import DEFAULT_CHECKPOINT, coco_eval, metrics_of
from model.synth import generate_split
from model.train import detect_resized, quick_validate
from runtime.geometry import scale_factor

# Category ids that are not 0..N-1 or 1..N: label 0 is category 3, label 1 is category 7.
CATEGORIES = [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}]
VALID = (32, 100)  # sqrt(area) in pixels: areas 1024 to 10000


def _xywh(x1, y1, x2, y2):
    return [x1, y1, x2 - x1, y2 - y1]


@pytest.fixture
def small_coco(tmp_path):
    boxes = [  # (image id, category id, box): "area" is written wrong on purpose (1.0): the box's own counts
        (10, 3, (10, 10, 60, 60)),      # 50 px: in range
        (10, 3, (100, 100, 150, 150)),  # 50 px: in range
        (10, 3, (150, 10, 170, 30)),    # 20 px: below the range, ignored
        (10, 7, (20, 100, 80, 160)),    # 60 px: in range
        (20, 7, (30, 30, 90, 90)),      # 60 px: in range, on an image without detections
    ]
    data = {"images": [{"id": 10, "file_name": "a.jpg", "width": 200, "height": 200},
                       {"id": 20, "file_name": "b.jpg", "width": 200, "height": 200}],
            "categories": CATEGORIES,
            "annotations": [{"id": i + 1, "image_id": im, "category_id": c, "bbox": _xywh(*b), "area": 1.0,
                             "iscrowd": 0} for i, (im, c, b) in enumerate(boxes)]}
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    return load_coco(tmp_path / "annotations.json")


def _dets(rows):
    boxes = np.array([r[0] for r in rows], np.float32).reshape(-1, 4)
    return boxes, np.array([r[1] for r in rows], np.float32), np.array([r[2] for r in rows], np.int64)


IMAGE_10 = _dets([
    ((10, 10, 60, 60), 0.90, 0),      # true positive of category 3
    ((70, 150, 120, 200), 0.95, 0),   # 50 px, matches nothing: a false positive, ranked first
    ((150, 10, 170, 30), 0.99, 0),    # matches the ignored 20 px box: neither true nor false
    ((0, 150, 10, 160), 0.97, 0),     # 10 px, matches nothing, outside the range: not counted
    ((20, 100, 80, 160), 0.50, 1),    # true positive of category 7
])
NO_DETECTIONS = _dets([])


def test_ap50_in_valid_range_by_hand(small_coco):
    # COCO's AP: mean over categories of the precision envelope at the 101 recalls 0, 0.01, ..., 1.
    # Category 3: FP then TP over 2 boxes in range: precision 0.5 up to recall 0.5 -> 0.5 * 51 / 101.
    # Category 7: its one box in range on image 10 found first -> 1.0.
    ev = coco_eval(small_coco, {10: IMAGE_10}, valid_range=VALID)
    assert metrics_of(ev)["AP50"] == pytest.approx(100 * (0.5 * 51 / 101 + 1.0) / 2, abs=0.006)
    # Image 20's category-7 box, never detected, now counts: category 7 reaches recall 0.5 at precision 1.
    ev = coco_eval(small_coco, {10: IMAGE_10, 20: NO_DETECTIONS}, valid_range=VALID)
    assert metrics_of(ev)["AP50"] == pytest.approx(100 * (0.5 * 51 / 101 + 51 / 101) / 2, abs=0.006)


def test_open_upper_bound(small_coco):
    # (32, None): the same boxes count as with (32, 100) (none is above 100 px); the 20 px one still not.
    for hi in (None, -1):
        ev = coco_eval(small_coco, {10: IMAGE_10}, valid_range=(32, hi))
        assert metrics_of(ev)["AP50"] == pytest.approx(100 * (0.5 * 51 / 101 + 1.0) / 2, abs=0.006)
    # No range at all: every box counts. Category 3 ranks TP (0.99), FP, FP, TP over 3 boxes:
    # precision 1 to recall 1/3, then 2/4 to recall 2/3 -> (34 * 1 + 33 * 0.5) / 101.
    ev = coco_eval(small_coco, {10: IMAGE_10})
    assert metrics_of(ev)["AP50"] == pytest.approx(100 * ((34 + 33 * 0.5) / 101 + 1.0) / 2, abs=0.006)


def test_no_detection_at_all_is_zero(small_coco):
    assert coco_eval(small_coco, {10: NO_DETECTIONS}, valid_range=VALID) is None
    assert metrics_of(None)["AP50"] == 0.0


@pytest.fixture(scope="module")
def val_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("qv")
    return load_coco(generate_split(root, seed=31, count=3, split="custom"))


def test_quick_validate_ap50_is_pycocotools(val_split):
    """quick_validate's AP50 on the shipped model equals pycocotools' own, run here on the same
    detections with the scale's valid range as an area range over the boxes' w * h."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    torch.set_num_threads(2)
    model, config = load_model(DEFAULT_CHECKPOINT)
    config = json.loads(json.dumps(config))
    v = config["validation"]
    v["images"] = 3
    ap50 = quick_validate(model, val_split, config)["ap50"]

    lo, hi = v["valid_range"]
    scale = config["chips"]["scales"][v["scale_index"]]
    results = []
    cat_ids = sorted(c["id"] for c in json.loads(val_split.annotations_path.read_text())["categories"])
    for info in val_split.images:
        image = val_split.root / info["file_name"]
        f = scale_factor(info["height"], info["width"], scale)
        boxes, scores, labels, _ = detect_resized(model, cv2.imread(str(image)), f, config,
                                                  v["score_threshold"], v["max_detections"])
        for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": info["id"], "category_id": cat_ids[c], "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_split.annotations_path))
        for a in gt.dataset["annotations"]:
            a["area"] = a["bbox"][2] * a["bbox"][3]
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.areaRng = [[lo ** 2, hi ** 2]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[1] > 0.3, "the shipped model finds objects on its own kind of data"
    assert ap50 == pytest.approx(float(ev.stats[1]), abs=1e-4)
