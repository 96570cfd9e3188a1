"""How sure an AP gap between two modes is: a paired bootstrap over the images.

A benchmark's AP gap comes from a few hundred images; another draw of images from the same scenes gives
another gap. Resampling the images with replacement (the same draw for every mode: paired, so what the
modes share cancels) and scoring each resample gives the spread of the gap, and the interval that holds
the middle `level` of it.

Scoring stays pycocotools': each mode's detections are matched to the ground truth once, per image and
category (model.evaluate.coco_eval: COCOeval.evaluate); a resample re-runs only COCOeval.accumulate over
those per-image results, repeated as often as the resample draws the image, for the AP over all areas at
100 detections (COCO's headline AP, `stats[0]`). So a thousand resamples take seconds, not hours.
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np


def resampled_ap(ev, sample) -> float:
    """COCO AP (%, all areas, the last maxDets) of the images at positions `sample` (repeats allowed) of
    ev.params.imgIds, ev a COCOeval after evaluate() (None: no detection at all, AP 0)."""
    if ev is None:
        return 0.0
    pe = ev._paramsEval
    sample = np.asarray(sample, np.int64).reshape(-1)
    n_images, n_areas = len(pe.imgIds), len(pe.areaRng)
    if sample.size and (sample.min() < 0 or sample.max() >= n_images):
        raise ValueError(f"sample: positions must lie in [0, {n_images}), got {sample.min()}..{sample.max()}")
    area = pe.areaRngLbl.index("all")
    n_cats = len(pe.catIds) if pe.useCats else 1
    # evaluate() orders evalImgs by category, then area range, then image.
    base = np.arange(n_cats)[:, None] * n_areas * n_images + area * n_images
    sub = copy.copy(ev)
    p = copy.deepcopy(pe)
    p.imgIds, p.areaRng, p.areaRngLbl = list(range(sample.size)), [pe.areaRng[area]], ["all"]
    p.maxDets = [pe.maxDets[-1]]
    sub.evalImgs = [ev.evalImgs[i] for i in (base + sample[None, :]).reshape(-1)]
    sub._paramsEval, sub.params, sub.eval = p, p, {}
    with contextlib.redirect_stdout(io.StringIO()):
        sub.accumulate(p)
    precision = sub.eval["precision"][:, :, :, 0, 0]
    valid = precision[precision > -1]
    return 100.0 * float(valid.mean()) if valid.size else 0.0


def paired_bootstrap(coco_set, detections: dict, reference: str, resamples: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict:
    """detections: {mode: {image_id: (boxes, scores, labels)}}, every mode on the same images.
    -> {mode: {"ap", "ap_low", "ap_high", "ap_minus_reference", "low", "high"}} (AP in %; low/high: the
    interval holding `level` of the resampled gaps to `reference`, percentile method), plus "resamples",
    "images" and "level" under the key "_bootstrap"."""
    from model.evaluate import coco_eval
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples: expected an int >= 1, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a fraction in (0, 1), got {level!r}")
    if reference not in detections:
        raise ValueError(f"reference: {reference!r} is not one of the modes {sorted(detections)}")
    ids = sorted(detections[reference])
    for mode, dets in detections.items():
        if sorted(dets) != ids:
            raise ValueError(f"detections: mode {mode!r} ran on other images than {reference!r}; a paired "
                             "bootstrap needs the same images for every mode")
    if not ids:
        raise ValueError("detections: no images")
    return bootstrap_evals({mode: coco_eval(coco_set, dets) for mode, dets in detections.items()}, len(ids),
                           reference, resamples, level, seed)


def bootstrap_evals(evals: dict, n_images: int, reference: str, resamples: int = 1000, level: float = 0.95,
                    seed: int = 0) -> dict:
    """paired_bootstrap from each mode's coco_eval result ({mode: COCOeval after evaluate(), or None}), all
    over the same n_images images: for a caller that has them already (fps.py scores its modes with them)."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, n_images, size=(resamples, n_images))
    full = np.arange(n_images)
    aps = {mode: np.array([resampled_ap(ev, s) for s in samples]) for mode, ev in evals.items()}
    point = {mode: resampled_ap(ev, full) for mode, ev in evals.items()}
    tails = 100.0 * np.array([(1.0 - level) / 2, (1.0 + level) / 2])
    out = {}
    for mode in evals:
        gaps = aps[mode] - aps[reference]
        out[mode] = {"ap": point[mode], "ap_low": float(np.percentile(aps[mode], tails[0])),
                     "ap_high": float(np.percentile(aps[mode], tails[1])),
                     "ap_minus_reference": point[mode] - point[reference],
                     "low": float(np.percentile(gaps, tails[0])), "high": float(np.percentile(gaps, tails[1]))}
    out["_bootstrap"] = {"resamples": resamples, "images": n_images, "level": level, "reference": reference}
    return out
