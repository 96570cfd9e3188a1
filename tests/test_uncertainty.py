"""benchmarks/uncertainty.py: a resample's AP against pycocotools run end to end on a dataset in which the
resampled images are really repeated (new image and annotation ids), and the paired bootstrap's
intervals on cases whose answer is known."""
from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks import uncertainty
from model.evaluate import coco_eval

N_IMAGES = 14


def _scene(seed=0):
    """A COCO dataset of N_IMAGES images (2 categories, 0-6 boxes of 6-120 px each) and two detectors'
    outputs: the boxes jittered (more for "b"), random scores, and a few false positives."""
    rng = np.random.default_rng(seed)
    images, annotations, dets = [], [], {"a": {}, "b": {}}
    for i in range(1, N_IMAGES + 1):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"})
        boxes, labels = [], []
        for _ in range(rng.integers(0, 7)):
            side = rng.uniform(6, 120)
            x, y = rng.uniform(0, 640 - side), rng.uniform(0, 480 - side)
            boxes.append([x, y, x + side, y + side * rng.uniform(0.6, 1.4)])
            labels.append(int(rng.integers(0, 2)))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": labels[-1] + 1,
                                "bbox": [x, y, side, boxes[-1][3] - y], "area": side * (boxes[-1][3] - y),
                                "iscrowd": 0})
        for mode, jitter in (("a", 2.0), ("b", 6.0)):
            b = np.array(boxes, np.float64).reshape(-1, 4) + rng.normal(0, jitter, (len(boxes), 4))
            fp = rng.uniform(0, 400, (2, 2))
            b = np.concatenate([b, np.concatenate([fp, fp + 40], 1)])
            lab = np.concatenate([np.array(labels, np.int64), rng.integers(0, 2, 2)])
            dets[mode][i] = (b, rng.uniform(0.05, 1.0, len(b)), lab)
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]}
    return coco, dets


def _write(tmp_path, name, coco):
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return SimpleNamespace(annotations_path=path)


def _pycocotools_ap(coco, dets) -> float:
    """COCO AP (%) of the whole pipeline, pycocotools only: loadRes, evaluate, accumulate, summarize."""
    results = [{"image_id": i, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
               for i, (boxes, scores, labels) in dets.items()
               for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist())]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.imgIds = sorted(dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100.0 * ev.stats[0]


def _repeated(coco, dets, sample):
    """The dataset whose k-th image is image ids[sample[k]] (ids sorted), with fresh image and
    annotation ids, and the detections copied along."""
    ids = sorted(dets)
    images, annotations, out = [], [], {}
    for k, pos in enumerate(sample, start=1):
        src = ids[pos]
        images.append({**next(im for im in coco["images"] if im["id"] == src), "id": k})
        for a in coco["annotations"]:
            if a["image_id"] == src:
                annotations.append({**a, "id": len(annotations) + 1, "image_id": k})
        out[k] = dets[src]
    return {**coco, "images": images, "annotations": annotations}, out


def test_full_sample_is_pycocotools_ap(tmp_path):
    coco, dets = _scene()
    ev = coco_eval(_write(tmp_path, "gt.json", coco), dets["a"])
    assert uncertainty.resampled_ap(ev, np.arange(N_IMAGES)) == pytest.approx(_pycocotools_ap(coco, dets["a"]),
                                                                               abs=1e-9)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resample_is_pycocotools_on_repeated_images(tmp_path, seed):
    coco, dets = _scene(seed)
    ev = coco_eval(_write(tmp_path, "gt.json", coco), dets["b"])
    sample = np.random.default_rng(seed).integers(0, N_IMAGES, N_IMAGES + 3)
    assert len(set(sample.tolist())) < sample.size  # some image really repeats
    expected = _pycocotools_ap(*_repeated(coco, dets["b"], sample))
    assert uncertainty.resampled_ap(ev, sample) == pytest.approx(expected, abs=1e-9)


def test_no_detections_scores_zero():
    assert uncertainty.resampled_ap(None, [0, 1]) == 0.0


def test_bootstrap_identical_modes_and_a_worse_one(tmp_path):
    coco, dets = _scene(4)
    coco_set = _write(tmp_path, "gt.json", coco)
    busy = max(dets["a"], key=lambda i: len(dets["a"][i][0]))
    worse = dict(dets["a"])
    boxes, scores, labels = worse[busy]
    worse[busy] = (boxes[:0], scores[:0], labels[:0])  # one image loses every detection
    out = uncertainty.paired_bootstrap(coco_set, {"ref": dets["a"], "same": dets["a"], "worse": worse,
                                                  "b": dets["b"]}, "ref", resamples=200, seed=1)
    assert out["same"]["low"] == out["same"]["high"] == out["same"]["ap_minus_reference"] == 0.0
    # Dropping detections never raises AP here: every resample's gap is <= 0, and some are < 0.
    assert out["worse"]["high"] <= 0.0 and out["worse"]["low"] < 0.0 and out["worse"]["ap_minus_reference"] < 0
    assert out["b"]["ap"] == pytest.approx(_pycocotools_ap(coco, dets["b"]), abs=1e-9)
    assert out["b"]["ap_low"] <= out["b"]["ap"] <= out["b"]["ap_high"]
    assert out["_bootstrap"] == {"resamples": 200, "images": N_IMAGES, "level": 0.95, "reference": "ref"}


def test_bootstrap_errors(tmp_path):
    coco, dets = _scene(5)
    coco_set = _write(tmp_path, "gt.json", coco)
    fewer = {i: d for i, d in dets["b"].items() if i != 1}
    with pytest.raises(ValueError, match="other images"):
        uncertainty.paired_bootstrap(coco_set, {"a": dets["a"], "b": fewer}, "a")
    with pytest.raises(ValueError, match="reference"):
        uncertainty.paired_bootstrap(coco_set, {"a": dets["a"]}, "sniper")
    with pytest.raises(ValueError, match="resamples"):
        uncertainty.paired_bootstrap(coco_set, {"a": dets["a"]}, "a", resamples=0)
    with pytest.raises(ValueError, match="level"):
        uncertainty.paired_bootstrap(coco_set, {"a": dets["a"]}, "a", level=1.5)
    ev = coco_eval(coco_set, dets["a"])
    with pytest.raises(ValueError, match="positions"):
        uncertainty.resampled_ap(ev, [0, N_IMAGES])


def test_resampling_after_the_metrics_and_from_evals(tmp_path):
    """fps.py scores a mode with metrics_of and then resamples the same COCOeval: the summary must not
    change what a resample sees, and bootstrap_evals on those evals equals paired_bootstrap."""
    from model.evaluate import metrics_of
    coco, dets = _scene(6)
    coco_set = _write(tmp_path, "gt.json", coco)
    sample = np.random.default_rng(6).integers(0, N_IMAGES, N_IMAGES)
    evals = {mode: coco_eval(coco_set, d) for mode, d in dets.items()}
    before = uncertainty.resampled_ap(evals["b"], sample)
    assert metrics_of(evals["b"])["AP"] == pytest.approx(_pycocotools_ap(coco, dets["b"]), abs=0.01)
    assert uncertainty.resampled_ap(evals["b"], sample) == before
    metrics_of(evals["a"])  # "a" summarised, "b" too (above): as fps.py leaves them
    assert (uncertainty.bootstrap_evals(evals, N_IMAGES, "a", resamples=50, seed=3)
            == uncertainty.paired_bootstrap(coco_set, dets, "a", resamples=50, seed=3))
