"""Independent references for the ops tests: float64 NumPy / plain Python written from DESIGN.md and
docs/contract.md, never from the C++ (shared by the ops test files; each op owns its functions)."""
import math

import numpy as np


# ---- box ops -----------------------------------------------------------------------------------

def _iou64(a, b):
    """IoU of two [x1, y1, x2, y2] boxes in float64 (0 for disjoint boxes and for two zero-area boxes)."""
    a = [float(v) for v in a]
    b = [float(v) for v in b]
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _iou_matrix64(boxes):
    """(N, N) float64 IoU matrix, vectorised, same definition as _iou64."""
    b = np.asarray(boxes, np.float64)
    w = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
    h = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area[:, None] + area[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((inter > 0) & (union > 0), inter / np.where(union > 0, union, 1), 0.0)


def decode_reference(scores, ltrb, stride=8, score_threshold=0.05, max_candidates=1000, scales=None,
                     offsets=None):
    """docs/contract.md "Decode", cell by cell in float64."""
    scores = np.asarray(scores)
    ltrb = np.asarray(ltrb, np.float64)
    n, c, h, w = scores.shape
    boxes, out_scores, labels, batch = [], [], [], []
    for i in range(n):
        scale = 1.0 if scales is None else float(scales[i])
        ox, oy = (0.0, 0.0) if offsets is None else (float(offsets[i][0]), float(offsets[i][1]))
        cand = []
        for ci in range(c):
            for y in range(h):
                for x in range(w):
                    s = float(scores[i, ci, y, x])
                    if s > score_threshold:
                        cand.append((-s, (ci * h + y) * w + x, ci, y, x))
        cand.sort()  # descending score, then ascending flat index
        for neg_s, _, ci, y, x in cand[:max_candidates]:
            cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
            l, t, r, b = ltrb[i, :, y, x]
            boxes.append([(cx - l) / scale + ox, (cy - t) / scale + oy, (cx + r) / scale + ox, (cy + b) / scale + oy])
            out_scores.append(-neg_s)
            labels.append(ci)
            batch.append(i)
    return (np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(out_scores, np.float64),
            np.asarray(labels, np.int64), np.asarray(batch, np.int64))


def nms_reference(boxes, scores, iou_threshold, labels=None):
    """Greedy NMS: by descending score (ties: lower index), drop boxes with IoU > threshold to a kept one."""
    n = len(scores)
    iou = _iou_matrix64(boxes) if n else np.zeros((0, 0))
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        if all(iou[i, j] <= iou_threshold or (labels is not None and labels[i] != labels[j]) for j in keep):
            keep.append(i)
    return np.asarray(keep, np.int64)


def soft_nms_reference(boxes, scores, labels=None, method="gaussian", sigma=0.55, iou_threshold=0.3,
                       score_threshold=0.001, max_output=None):
    """DESIGN.md "Soft-NMS", literally: a loop over the remaining boxes, float64 scores."""
    iou = _iou_matrix64(boxes) if len(scores) else np.zeros((0, 0))
    current = np.asarray(scores, np.float64).copy()
    remaining = [i for i in range(len(current)) if not current[i] < score_threshold]
    keep, out = [], []
    while remaining and (max_output is None or len(keep) < max_output):
        m = max(remaining, key=lambda i: (current[i], -i))  # highest score, then lowest index
        keep.append(m)
        out.append(current[m])
        remaining.remove(m)
        survivors = []
        for j in remaining:
            if labels is None or labels[j] == labels[m]:
                v = iou[m, j]
                if method == "gaussian":
                    wgt = math.exp(-v * v / sigma)
                elif method == "linear":
                    wgt = 1.0 - v if v > iou_threshold else 1.0
                else:
                    wgt = 0.0 if v > iou_threshold else 1.0
                current[j] *= wgt
            if not current[j] < score_threshold:
                survivors.append(j)
        remaining = survivors
    return np.asarray(keep, np.int64), np.asarray(out, np.float64)


def stack_prune_reference(boxes, chip, image_size, valid_range=None):
    """DESIGN.md "Focus stacking rules", box by box in float64: clip the box to its chip; keep it when the
    clipped box is non-empty and each clipped side is strictly inside the chip or on a chip side that is
    the image border; and lo <= sqrt(area) <= hi of the unclipped box."""
    height, width = image_size
    lo, hi = (0.0, math.inf) if valid_range is None else valid_range
    boxes = np.asarray(boxes, np.float64)
    chips = np.broadcast_to(np.asarray(chip, np.float64), boxes.shape)
    keep = []
    for (x1, y1, x2, y2), (c1, d1, c2, d2) in zip(boxes, chips):
        cx1, cy1, cx2, cy2 = min(max(x1, c1), c2), min(max(y1, d1), d2), max(min(x2, c2), c1), max(min(y2, d2), d1)
        ok = cx2 > cx1 and cy2 > cy1
        ok = ok and (c1 < cx1 < c2 or (cx1 == c1 and c1 <= 0))
        ok = ok and (d1 < cy1 < d2 or (cy1 == d1 and d1 <= 0))
        ok = ok and (c1 < cx2 < c2 or (cx2 == c2 and c2 >= width))
        ok = ok and (d1 < cy2 < d2 or (cy2 == d2 and d2 >= height))
        ok = ok and lo <= math.sqrt((x2 - x1) * (y2 - y1)) <= hi
        keep.append(ok)
    return np.asarray(keep, bool)


def top_k_reference(scores, k):
    """Indices of the k highest scores, descending, ties by lower index."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return np.asarray(order[:k], np.int64)
