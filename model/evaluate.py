"""Whole-image evaluation of a checkpoint: each test scale alone and the full 3-scale pyramid (SNIP valid
ranges, Soft-NMS, top-k), COCO AP with pycocotools, and FocusPixel quality (how many small objects the
FocusChips of each transition hold, and how much of the image they cover).

Thin on purpose: preprocessing, decoding, chips and Soft-NMS are runtime.ops, so these figures are those
of the deployed pipeline; the engine (runtime/) owns the cascade itself.

    python -m model.evaluate [--checkpoint model/checkpoints/default.pt] [--limit N]
    python -m model.evaluate --checkpoint runs/mine/final.pt --val-annotations my/val.json --val-images my/images
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from runtime import ops
from runtime.geometry import padded_length, resized_image_size, scale_factor

from .config import load_config
from .data import load_coco, read_image
from .synth import ensure_split
from .checkpoint import load_model
from .network import transition_focus_channels

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default.pt"
COCO_SMALL = 32.0  # sqrt(area) below which COCO calls an object small


def _upper(value) -> float:
    """Config files and bundle.json write an open upper bound as null."""
    return math.inf if value is None else float(value)


class ScaleRunner:
    """Runs the network on a whole image at one (min_side, max_side) scale, as the engine will."""

    def __init__(self, model, config: dict):
        self.model = model
        self.mean = config["input"]["mean_rgb"]
        self.std = config["input"]["std_rgb"]
        self.divisor = config["input"]["size_divisor"]
        self.det_stride = config["network"]["det_stride"]
        self.focus_stride = config["network"]["focus_stride"]
        self.inference = config["inference"]

    @torch.no_grad()
    def __call__(self, image: np.ndarray, scale, focus_channel: int = 1) -> dict:
        h, w = image.shape[:2]
        f = scale_factor(h, w, scale)
        oh, ow = resized_image_size(h, w, f)
        out_hw = (padded_length(oh, self.divisor), padded_length(ow, self.divisor))
        whole = np.array([[0, 0, w, h]], np.float32)
        batch = ops.crop_resize(image, whole, np.array([f], np.float32), out_hw, self.mean, self.std)
        out = self.model(torch.from_numpy(batch))
        boxes, scores, labels, _ = ops.decode(
            out["scores"].numpy(), out["ltrb"].numpy(), stride=self.det_stride,
            score_threshold=self.inference["decode"]["score_threshold"],
            max_candidates=self.inference["decode"]["max_candidates"],
            scales=np.array([f], np.float32), offsets=np.zeros((1, 2), np.float32))
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        # The focus map over the real input only (cells beyond it saw padding).
        fh, fw = math.ceil(oh / self.focus_stride), math.ceil(ow / self.focus_stride)
        focus = np.ascontiguousarray(out["focus"][0, focus_channel, :fh, :fw].numpy())
        return {"boxes": boxes, "scores": scores, "labels": labels, "focus": focus,
                "factor": f, "input_hw": (oh, ow)}


def in_valid_range(boxes: np.ndarray, valid_range) -> np.ndarray:
    """SNIP: a scale answers only for objects whose sqrt(area), in original pixels, is in its range."""
    lo, hi = float(valid_range[0]), _upper(valid_range[1])
    side = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    return (side >= lo) & (side <= hi)


def merge_detections(parts: list[dict], inference: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate per-scale detections, class-aware Soft-NMS, keep the top max_detections."""
    boxes = np.concatenate([p["boxes"] for p in parts]).astype(np.float32)
    scores = np.concatenate([p["scores"] for p in parts]).astype(np.float32)
    labels = np.concatenate([p["labels"] for p in parts]).astype(np.int32)
    nms = inference["soft_nms"]
    keep, decayed = ops.soft_nms(boxes, scores, labels, method=nms["method"], sigma=nms["sigma"],
                                 iou_threshold=nms["iou_threshold"], score_threshold=nms["score_threshold"],
                                 max_output=inference["max_detections"])
    return boxes[keep], decayed, labels[keep]


def focus_chips_in_image(runner_output: dict, chip_params: dict, focus_stride: int) -> np.ndarray:
    """FocusChips (Algorithm 1) of one whole-image focus map, in original-image pixels."""
    cells = ops.focus_chips(runner_output["focus"], chip_params["threshold"], chip_params["dilation"],
                            chip_params["min_size"], chip_params.get("merge", ops.DEFAULT_MERGE))
    return ops.chips_to_image(cells, focus_stride, runner_output["factor"], runner_output["input_hw"],
                              chip_params["min_size"])


def chip_quality(chips: np.ndarray, gt_boxes: np.ndarray, image_hw) -> tuple[int, int, float]:
    """(boxes fully inside some chip, boxes, fraction of the image the chips cover)."""
    h, w = image_hw
    inside = np.zeros(len(gt_boxes), bool)
    covered = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in chips:
        inside |= ((gt_boxes[:, 0] >= x1 - 1e-3) & (gt_boxes[:, 1] >= y1 - 1e-3)
                   & (gt_boxes[:, 2] <= x2 + 1e-3) & (gt_boxes[:, 3] <= y2 + 1e-3))
        covered[int(math.floor(y1)):int(math.ceil(y2)), int(math.floor(x1)):int(math.ceil(x2))] = True
    return int(inside.sum()), len(gt_boxes), float(covered.mean()) if covered.size else 0.0


def coco_eval(coco_set, detections: dict[int, tuple], valid_range=None):
    """pycocotools' COCOeval of {image_id: (boxes, scores, labels)} after evaluate() (per image and
    category; accumulate() not yet run), or None when there is no detection at all.

    valid_range: (lo, hi) in sqrt(box area) pixels (hi None, inf or negative: no upper bound), the SNIP
    rule of one scale (in_valid_range): COCO's area range "all" becomes [lo^2, hi^2] over the boxes' own
    areas (w * h, not the file's "area"), so a ground truth outside it is ignored (neither found nor
    missed), and so is a detection outside it that matches nothing."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_set.annotations_path))
    if valid_range is not None:
        lo, hi = float(valid_range[0]), _upper(valid_range[1])
        hi = math.inf if hi < 0 else hi
        for ann in gt.anns.values():
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    cat_ids = sorted(gt.getCatIds())
    results = []
    for image_id, (boxes, scores, labels) in detections.items():
        for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": int(image_id), "category_id": cat_ids[int(c)],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    if not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(detections)
        if valid_range is not None:
            ev.params.areaRng[0] = [lo * lo, hi * hi]
        ev.evaluate()
    return ev


def coco_metrics(coco_set, detections: dict[int, tuple]) -> dict:
    """AP, AP50, APs, APm, APl (in %) from pycocotools for {image_id: (boxes, scores, labels)}."""
    return metrics_of(coco_eval(coco_set, detections))


def metrics_of(ev) -> dict:
    """AP, AP50, AP75, APs, APm, APl (in %) of a coco_eval result (None: all 0). accumulate() and
    summarize() leave its per-image results as they are, so it can be resampled afterwards."""
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    if ev is None:
        return dict.fromkeys(names, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
        ev.summarize()
    return {name: round(100.0 * max(float(ev.stats[i]), 0.0), 2) for i, name in enumerate(names)}


def evaluate(checkpoint=DEFAULT_CHECKPOINT, annotations=None, images_dir=None, limit: int | None = None,
             overrides: dict | None = None, progress: bool = True) -> dict:
    """Evaluates a checkpoint; returns {"modes": {name: metrics}, "focus": {...}, "images": n, ...}."""
    model, config = load_model(checkpoint)
    config = dict(config)
    config["inference"] = load_config(overrides={"inference": overrides or {}})["inference"]
    inference = config["inference"]
    if annotations is None:
        annotations = ensure_split("val") / "annotations.json"
    coco_set = load_coco(annotations, images_dir)
    if list(coco_set.classes) != list(config["classes"]):
        raise ValueError(f"annotations: {annotations} has classes {coco_set.classes}, the checkpoint {checkpoint} "
                         f"was trained on {config['classes']}: evaluate it on a file with the same categories")
    images = coco_set.images[:limit] if limit else coco_set.images
    runner = ScaleRunner(model, config)
    scales, ranges = inference["scales"], inference["valid_ranges"]
    focus_stride = config["network"]["focus_stride"]
    # Each transition's chips from its own head where the model has them (as the bundle's engine does).
    channels = transition_focus_channels(config["network"]) or [1] * (len(scales) - 1)

    modes = {f"scale{i + 1}": {} for i in range(len(scales))}
    modes["pyramid"] = {}
    # Per transition: (small objects inside a chip, small objects, sum of covered fractions).
    transitions = [[0, 0, 0.0] for _ in inference["chip_params"]]
    started = time.perf_counter()
    for info in tqdm(images, desc="evaluate", disable=not progress, file=sys.stderr):
        image = read_image(info["path"])
        gt = coco_set.boxes[info["id"]]
        per_scale = [runner(image, s, channels[i] if i < len(channels) else 1) for i, s in enumerate(scales)]
        for i, out in enumerate(per_scale):
            modes[f"scale{i + 1}"][info["id"]] = merge_detections([out], inference)
        valid = [{k: v[in_valid_range(out["boxes"], r)] for k, v in out.items()
                  if k in ("boxes", "scores", "labels")} for out, r in zip(per_scale, ranges)]
        modes["pyramid"][info["id"]] = merge_detections(valid, inference)
        # Transition i -> i+1 is judged on the objects the finer scales answer for.
        for i, params in enumerate(inference["chip_params"]):
            chips = focus_chips_in_image(per_scale[i], params, focus_stride)
            side = np.sqrt((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))
            target = gt[side < (COCO_SMALL if i == len(inference["chip_params"]) - 1 else float(ranges[i][0]))]
            hit, total, cover = chip_quality(chips, target, image.shape[:2])
            transitions[i][0] += hit
            transitions[i][1] += total
            transitions[i][2] += cover
    elapsed = time.perf_counter() - started

    metrics = {name: coco_metrics(coco_set, dets) for name, dets in modes.items()}
    n = max(len(images), 1)
    focus = {}
    for i, (hit, total, cover) in enumerate(transitions):
        focus[f"scale{i + 1}->scale{i + 2}"] = {
            "objects": "COCO small (< 32 px)" if i == len(transitions) - 1
            else f"smaller than {ranges[i][0]} px (below scale {i + 1}'s valid range)",
            "recall": round(hit / total, 4) if total else None, "boxes": total,
            "coverage": round(cover / n, 4), **inference["chip_params"][i]}
    return {"checkpoint": str(checkpoint), "annotations": str(annotations), "images": len(images),
            "seconds": round(elapsed, 1), "modes": metrics, "focus": focus}


def format_report(report: dict) -> str:
    lines = [f"{report['images']} images from {report['annotations']} ({report['seconds']} s)",
             f"{'mode':<10}" + "".join(f"{k:>8}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))]
    for mode, m in report["modes"].items():
        lines.append(f"{mode:<10}" + "".join(f"{m[k]:>8.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    lines.append("FocusChips (t, d, k): objects inside a chip / chip area as a fraction of the image")
    for name, f in report["focus"].items():
        recall = "n/a" if f["recall"] is None else f"{100 * f['recall']:.1f}%"
        lines.append(f"  {name} ({f['threshold']}, {f['dilation']}, {f['min_size']}): {recall} of {f['boxes']} "
                     f"{f['objects']} objects, coverage {100 * f['coverage']:.1f}%")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--val-annotations", "--annotations", dest="annotations",
                        help="COCO JSON (default: the generated val split)")
    parser.add_argument("--val-images", "--images", dest="images",
                        help="image folder (default: <annotations dir>/images)")
    parser.add_argument("--limit", type=int, help="evaluate the first N images only")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.images and not args.annotations:
        parser.error("--val-images needs --val-annotations")
    try:
        report = evaluate(args.checkpoint, args.annotations, args.images, args.limit)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
