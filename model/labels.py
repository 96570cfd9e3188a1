"""Training targets for one chip: FocusPixel labels (paper Sec. 4.1) and stride-8 detection targets.

All boxes here are float [x1, y1, x2, y2] in pixels of the RESIZED CHIP (the network input), except
where a function says "original" (SNIP valid ranges are measured in original-image pixels).

FocusPixel rule (stride 16, s = sqrt(area of the box after scaling), a=5, b=64, c=90 by default):
    a < s < b            -> 1 on every cell the box overlaps (IoU(cell, box) > 0)
    s < a  or  b < s < c -> -1 (ignored in the loss)
    otherwise            -> 0
Precedence where several boxes touch a cell: 1 > -1 > 0 (the paper marks cells that overlap an invalid
box as -1 unless a small box makes them 1). The comparisons are strict as in the paper's equation, so
s == a, s == b and s >= c are 0. A box cut by the chip is sized by its full (unclipped) scaled extent,
because the object's scale is what says whether a finer scale is needed; only the cells inside the
chip are labelled.

Detection targets (anchor-free, TTFNet-style CenterNet): per class an elliptical Gaussian heat map
peaked (exactly 1) at the cell holding the box centre, sigma = alpha * side / 6; ltrb regression on the
cells of a smaller (beta) Gaussian window inside the box, weighted by the Gaussian and log(area).
SNIP: boxes outside the scale's valid range, and valid boxes mostly cut away by the chip, are ignored:
their cells carry no classification loss for their class and they are never regressed.
"""
from __future__ import annotations

import math

import numpy as np

FOCUS_POSITIVE, FOCUS_NEGATIVE, FOCUS_IGNORE = 1, 0, -1


def _check_boxes(boxes, name="boxes") -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (K, 4) [x1, y1, x2, y2], got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{name}: expected finite coordinates")
    return boxes


def box_sizes(boxes) -> np.ndarray:
    """sqrt(area) of each box (0 for degenerate boxes)."""
    boxes = _check_boxes(boxes)
    w = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    h = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return np.sqrt(w * h)


def valid_range_mask(boxes_original, valid_range) -> np.ndarray:
    """SNIP: which boxes (ORIGINAL image pixels) have lo <= sqrt(area) <= hi. hi may be inf / None / -1."""
    lo, hi = valid_range
    hi = math.inf if hi is None or hi < 0 else hi
    s = box_sizes(boxes_original)
    return (s >= lo) & (s <= hi)


def _cell_span(lo: float, hi: float, stride: int, n: int) -> tuple[int, int]:
    """Cells j (0 <= j < n) whose interval [j*stride, (j+1)*stride) overlaps (lo, hi) with positive length."""
    j0 = max(int(math.floor(lo / stride)), 0)
    j1 = min(int(math.ceil(hi / stride)), n)  # exclusive
    return j0, j1


def focus_labels(boxes, chip_hw, stride: int = 16, a: float = 5.0, b: float = 64.0,
                 c: float = 90.0) -> np.ndarray:
    """FocusPixel labels (H', W') int64 in {1, 0, -1} for a chip of size chip_hw = (H, W), H' = ceil(H/stride).

    `boxes` (K, 4): ground truth in resized-chip pixels (after scaling), possibly extending outside.
    """
    boxes = _check_boxes(boxes)
    h, w = int(chip_hw[0]), int(chip_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"chip_hw: expected positive (H, W), got {chip_hw}")
    if not 0 <= a <= b <= c:
        raise ValueError(f"a, b, c: expected 0 <= a <= b <= c, got {a}, {b}, {c}")
    gh, gw = -(-h // stride), -(-w // stride)
    positive = np.zeros((gh, gw), bool)
    ignore = np.zeros((gh, gw), bool)
    sizes = box_sizes(boxes)
    for box, s in zip(boxes, sizes):
        if a < s < b:
            target = positive
        elif s < a or b < s < c:
            target = ignore
        else:
            continue
        x0, x1 = _cell_span(box[0], box[2], stride, gw)
        y0, y1 = _cell_span(box[1], box[3], stride, gh)
        if x1 > x0 and y1 > y0 and box[2] > box[0] and box[3] > box[1]:
            target[y0:y1, x0:x1] = True
    labels = np.zeros((gh, gw), np.int64)
    labels[ignore] = FOCUS_IGNORE
    labels[positive] = FOCUS_POSITIVE
    return labels


def transition_bounds(b_original: float, factor: float, a: float = 5.0, b: float = 64.0,
                      c: float = 90.0) -> tuple[float, float, float]:
    """(a, b', c') of focus_labels for a per-transition focus head (issue 21): its positives are the
    objects under `b_original` px in the ORIGINAL image (what the finer scale it feeds must see), so its
    upper bound in the coarse scale's pixels is b' = b_original * factor, with the paper's ignore band
    scaled alike (c' = b' * c / b) and the paper's lower bound `a` (coarse-scale pixels) kept."""
    if not b_original > 0 or not factor > 0:
        raise ValueError(f"b_original, factor: expected positive values, got {b_original}, {factor}")
    if not 0 <= a <= b <= c or b <= 0:
        raise ValueError(f"a, b, c: expected 0 <= a <= b <= c and b > 0, got {a}, {b}, {c}")
    upper = float(b_original) * float(factor)
    return float(a), upper, upper * float(c) / float(b)


def focus_positive_spans(boxes, chip_hw, stride: int = 16, a: float = 5.0, b: float = 64.0) -> np.ndarray:
    """The cells of each FocusPixel-positive box (a < sqrt(area) < b) as (P, 4) int64 [y0, y1, x0, x1),
    one row per box that covers a cell: focus_labels' label-1 cells are the union of these spans.
    Lets a loss or a metric count objects rather than cells (model/focus_refit.py)."""
    boxes = _check_boxes(boxes)
    h, w = int(chip_hw[0]), int(chip_hw[1])
    gh, gw = -(-h // stride), -(-w // stride)
    spans = []
    for box, s in zip(boxes, box_sizes(boxes)):
        if not a < s < b or box[2] <= box[0] or box[3] <= box[1]:
            continue
        x0, x1 = _cell_span(box[0], box[2], stride, gw)
        y0, y1 = _cell_span(box[1], box[3], stride, gh)
        if x1 > x0 and y1 > y0:
            spans.append((y0, y1, x0, x1))
    return np.array(spans, np.int64).reshape(-1, 4)


def _gaussian_window(cx_cell: int, cy_cell: int, sx: float, sy: float, rx: int, ry: int, gw: int, gh: int):
    x0, x1 = max(cx_cell - rx, 0), min(cx_cell + rx + 1, gw)
    y0, y1 = max(cy_cell - ry, 0), min(cy_cell + ry + 1, gh)
    xs = np.arange(x0, x1) - cx_cell
    ys = np.arange(y0, y1) - cy_cell
    g = np.exp(-(xs[None, :] ** 2) / (2 * sx * sx) - (ys[:, None] ** 2) / (2 * sy * sy))
    return (y0, y1, x0, x1), g


def detection_targets(boxes, classes, ignore_boxes, ignore_classes, num_classes: int, chip_hw,
                      stride: int = 8, alpha: float = 0.54, beta: float = 0.54) -> dict:
    """Stride-8 targets for one chip.

    boxes (K,4) / classes (K,): valid ground truth in chip pixels (already clipped to the chip).
    ignore_boxes (M,4) / ignore_classes (M,): boxes to ignore (SNIP-invalid at this scale, or mostly cut).
    Returns float32 arrays: heatmap (C,h,w), cls_weight (C,h,w) (0 = ignored), box_target (4,h,w)
    [x1,y1,x2,y2], reg_weight (h,w) (sums to sum(log(area)) over the boxes), with h = ceil(H/stride).
    """
    boxes = _check_boxes(boxes)
    ignore_boxes = _check_boxes(ignore_boxes, "ignore_boxes")
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    ignore_classes = np.asarray(ignore_classes, dtype=np.int64).reshape(-1)
    if len(classes) != len(boxes):
        raise ValueError(f"classes: expected {len(boxes)} entries (one per box), got {len(classes)}")
    if len(ignore_classes) != len(ignore_boxes):
        raise ValueError(f"ignore_classes: expected {len(ignore_boxes)} entries, got {len(ignore_classes)}")
    for name, cl in (("classes", classes), ("ignore_classes", ignore_classes)):
        if cl.size and (cl.min() < 0 or cl.max() >= num_classes):
            raise ValueError(f"{name}: expected values in [0, {num_classes}), got {cl.min()}..{cl.max()}")
    h, w = int(chip_hw[0]), int(chip_hw[1])
    gh, gw = -(-h // stride), -(-w // stride)
    heatmap = np.zeros((num_classes, gh, gw), np.float32)
    cls_weight = np.ones((num_classes, gh, gw), np.float32)
    box_target = np.zeros((4, gh, gw), np.float32)
    reg_weight = np.zeros((gh, gw), np.float32)

    for box, cl in zip(ignore_boxes, ignore_classes):
        x0, x1 = _cell_span(box[0], box[2], stride, gw)
        y0, y1 = _cell_span(box[1], box[3], stride, gh)
        cls_weight[cl, y0:y1, x0:x1] = 0.0

    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    # Largest first, so smaller boxes overwrite the regression targets where they overlap.
    for i in sorted(np.flatnonzero(keep), key=lambda k: -areas[k]):
        box, cl = boxes[i], classes[i]
        bw, bh = (box[2] - box[0]) / stride, (box[3] - box[1]) / stride
        cx = min(max(int((box[0] + box[2]) / 2 // stride), 0), gw - 1)
        cy = min(max(int((box[1] + box[3]) / 2 // stride), 0), gh - 1)
        sx, sy = max(alpha * bw / 6, 0.2), max(alpha * bh / 6, 0.2)
        (y0, y1, x0, x1), g = _gaussian_window(cx, cy, sx, sy, int(alpha * bw / 2), int(alpha * bh / 2), gw, gh)
        np.maximum(heatmap[cl, y0:y1, x0:x1], g.astype(np.float32), out=heatmap[cl, y0:y1, x0:x1])
        heatmap[cl, cy, cx] = 1.0
        cls_weight[cl, y0:y1, x0:x1] = 1.0  # a valid object inside an ignored one is still learnt

        sxr, syr = max(beta * bw / 6, 0.2), max(beta * bh / 6, 0.2)
        (y0, y1, x0, x1), g = _gaussian_window(cx, cy, sxr, syr, int(beta * bw / 2), int(beta * bh / 2), gw, gh)
        # Only cells whose centre lies inside the box (distances must be positive), centre cell always.
        xc = (np.arange(x0, x1) + 0.5) * stride
        yc = (np.arange(y0, y1) + 0.5) * stride
        inside = ((xc[None, :] > box[0]) & (xc[None, :] < box[2]) & (yc[:, None] > box[1]) & (yc[:, None] < box[3]))
        inside[cy - y0, cx - x0] = True
        g = g * inside
        wsum = g.sum()
        region = g > 0
        weights = (g / wsum * math.log(max(areas[i], 2.0))).astype(np.float32)
        rw = reg_weight[y0:y1, x0:x1]
        rw[region] = weights[region]
        for k in range(4):
            bt = box_target[k, y0:y1, x0:x1]
            bt[region] = box[k]
    return {"heatmap": heatmap, "cls_weight": cls_weight, "box_target": box_target, "reg_weight": reg_weight}
