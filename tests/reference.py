"""Independent references for the ops tests (NumPy, OpenCV, SciPy, plain Python written from the DESIGN
text). Never imports runtime. Each function is named after the op it checks."""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage


# ---- map ops --------------------------------------------------------------------------------

def dilate_reference(mask: np.ndarray, d: int) -> np.ndarray:
    """cv2.dilate with a d x d ones kernel, outside the map = background."""
    on = (np.asarray(mask) != 0).astype(np.uint8)
    if on.size == 0:
        return on
    return cv2.dilate(on, np.ones((d, d), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)


def connected_components_reference(mask: np.ndarray):
    """cv2 8-connected labelling with the Wu (SAUF) algorithm, whose numbering is raster order of each
    component's first pixel (cv2's default algorithm, block-based, numbers differently). Returns labels
    int32 and boxes (C, 4) int32 [x1, y1, x2, y2)."""
    on = (np.asarray(mask) != 0).astype(np.uint8)
    if on.size == 0:
        return np.zeros(on.shape, np.int32), np.zeros((0, 4), np.int32)
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(on, 8, cv2.CV_32S, cv2.CCL_WU)
    x, y, w, h = (stats[1:, i] for i in range(4))
    return labels.astype(np.int32), np.stack([x, y, x + w, y + h], 1).astype(np.int32).reshape(-1, 4)


def focus_chips_grow_span(lo: int, hi: int, k: int, size: int) -> tuple[int, int]:
    # DESIGN, Algorithm 1 step 4: grow about the centre (odd extra cell to the high side), shift inward at
    # the border, shrink only when the map itself is smaller than k.
    if hi - lo < k:
        lo -= (k - (hi - lo)) // 2
        hi = lo + k
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > size:
        lo, hi = lo - (hi - size), size
    return max(lo, 0), hi


def focus_chips_grown_rects(mask: np.ndarray, k: int) -> list[tuple[int, int, int, int]]:
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), int))
    height, width = mask.shape
    rects = []
    for rows, cols in ndimage.find_objects(labels):
        x1, x2 = focus_chips_grow_span(cols.start, cols.stop, k, width)
        y1, y2 = focus_chips_grow_span(rows.start, rows.stop, k, height)
        rects.append((x1, y1, x2, y2))
    return rects


def focus_chips_reference(prob: np.ndarray, threshold: float, dilation: int, min_size: int) -> np.ndarray:
    """Algorithm 1 of docs/design.md, steps 1-5, in plain Python + SciPy. Returns (M, 4) int32 sorted by (y1, x1)."""
    prob = np.asarray(prob, np.float32)
    binary = prob >= np.float32(threshold)
    if not binary.any():
        return np.zeros((0, 4), np.int32)
    mask = ndimage.binary_dilation(binary, structure=np.ones((dilation, dilation), bool), border_value=0)
    rects = focus_chips_grown_rects(mask, min_size)
    while True:
        painted = np.zeros(prob.shape, bool)
        for x1, y1, x2, y2 in rects:
            painted[y1:y2, x1:x2] = True
        merged = focus_chips_grown_rects(painted, min_size)
        if len(merged) == len(rects):
            break
        rects = merged
    merged.sort(key=lambda r: (r[1], r[0]))
    return np.array(merged, np.int32).reshape(-1, 4)


def focus_chips_cheaper_reference(prob: np.ndarray, threshold: float, dilation: int, min_size: int) -> np.ndarray:
    """Algorithm 1 with the "cheaper" merge rule (runtime/ops/maps.py focus_chips), in plain Python + SciPy:
    steps 1-4 as the paper's, then, while a pair of touching rectangles (cells equal or 8-adjacent) has a
    grown enclosing rectangle of no more cells than the two, merge the pair that saves the most (ties: the
    first (i, j)); the merged one takes i's place, the last one j's. Sorted by (y1, x1, y2, x2)."""
    prob = np.asarray(prob, np.float32)
    binary = prob >= np.float32(threshold)
    if not binary.any():
        return np.zeros((0, 4), np.int32)
    height, width = prob.shape
    mask = ndimage.binary_dilation(binary, structure=np.ones((dilation, dilation), bool), border_value=0)
    rects = [list(r) for r in focus_chips_grown_rects(mask, min_size)]

    def area(r):
        return (r[2] - r[0]) * (r[3] - r[1])

    def enclose(a, b):
        x1, x2 = focus_chips_grow_span(min(a[0], b[0]), max(a[2], b[2]), min_size, width)
        y1, y2 = focus_chips_grow_span(min(a[1], b[1]), max(a[3], b[3]), min_size, height)
        return [x1, y1, x2, y2]

    while True:
        best = None
        for i, a in enumerate(rects):
            for j in range(i + 1, len(rects)):
                b = rects[j]
                if a[0] > b[2] or b[0] > a[2] or a[1] > b[3] or b[1] > a[3]:
                    continue  # a column or row of free cells between them
                u = enclose(a, b)
                saving = area(a) + area(b) - area(u)
                if saving >= 0 and (best is None or saving > best[0]):
                    best = (saving, i, j, u)
        if best is None:
            break
        _, i, j, u = best
        rects[i] = u
        rects[j] = rects[-1]
        rects.pop()
    rects.sort(key=lambda r: (r[1], r[0], r[3], r[2]))
    return np.array(rects, np.int32).reshape(-1, 4)


def chips_to_image_reference(chips, stride, scale, input_hw, min_size, offset=(0, 0)) -> np.ndarray:
    """Algorithm 1 step 6 chip by chip in plain Python; scale/input_hw/offset scalar-like or per chip."""
    chips = np.asarray(chips).reshape(-1, 4)
    count = len(chips)
    scale = np.broadcast_to(np.asarray(scale, float), (count,))
    input_hw = np.broadcast_to(np.asarray(input_hw, float), (count, 2))
    offset = np.broadcast_to(np.asarray(offset, float), (count, 2))
    out = []
    for (x1, y1, x2, y2), s, (h, w), (x0, y0) in zip(chips.tolist(), scale, input_hw, offset):
        box = []
        for lo, hi, size in ((x1 * stride, x2 * stride, w), (y1 * stride, y2 * stride, h)):
            target = min(min_size * stride, size)
            lo_c, hi_c = min(max(lo, 0), size), min(max(hi, 0), size)
            if hi_c - lo_c < target:
                if hi > size:        # cut at the far border: extend back towards 0
                    lo_c = max(hi_c - target, 0)
                elif lo < 0:         # cut at 0: extend towards the far border
                    hi_c = min(lo_c + target, size)
            box.append((lo_c, hi_c))
        (bx1, bx2), (by1, by2) = box
        out.append([bx1 / s + x0, by1 / s + y0, bx2 / s + x0, by2 / s + y0])
    return np.array(out, np.float64).reshape(-1, 4).astype(np.float32)


def paint_boxes_reference(maps, boxes, index, stride, keep=None) -> np.ndarray:
    """A cell is painted (set to 1) when its pixel span [c * stride, (c + 1) * stride) overlaps a kept box
    with positive length on both axes (float64, cell by cell)."""
    out = np.array(maps, np.float32, copy=True)
    _, h, w = out.shape
    for k, (box, b) in enumerate(zip(np.asarray(boxes, np.float64), np.asarray(index))):
        if keep is not None and not keep[k]:
            continue
        x1, y1, x2, y2 = box
        for y in range(h):
            for x in range(w):
                ox = min(x2, (x + 1) * stride) - max(x1, x * stride)
                oy = min(y2, (y + 1) * stride) - max(y1, y * stride)
                if ox > 0 and oy > 0:
                    out[b, y, x] = 1.0
    return out


def crop_resize_sizes(chips: np.ndarray, scales: np.ndarray):
    chips = np.asarray(chips, np.float32)
    scales = np.asarray(scales, np.float32)
    oh = np.floor((chips[:, 3] - chips[:, 1]) * scales + np.float32(0.5)).astype(int)
    ow = np.floor((chips[:, 2] - chips[:, 0]) * scales + np.float32(0.5)).astype(int)
    return oh, ow


def crop_resize_normalise(pixels: np.ndarray, mean, std, bgr_to_rgb: bool) -> np.ndarray:
    """(..., 3) float pixels in input channel order -> (3, ...) normalised, output channel order."""
    if bgr_to_rgb:
        pixels = pixels[..., ::-1]
    out = (pixels / 255.0 - np.asarray(mean, float)) / np.asarray(std, float)
    return np.moveaxis(out, -1, 0)


def crop_resize_reference(image, chips, scales, out_hw, mean, std, bgr_to_rgb=True) -> np.ndarray:
    """NumPy float64 from the text: src = x1 + (u + 0.5) / s - 0.5 clamped to [0, size - 1], bilinear."""
    image = np.asarray(image, np.float64)
    chips = np.asarray(chips, np.float32).reshape(-1, 4)
    scales = np.broadcast_to(np.asarray(scales, np.float32), (len(chips),))
    height, width = image.shape[:2]
    out = np.zeros((len(chips), 3) + tuple(out_hw))
    for m, ((x1, y1, _, _), s, oh, ow) in enumerate(zip(chips, scales, *crop_resize_sizes(chips, scales))):
        sx = np.clip(float(x1) + (np.arange(ow) + 0.5) / float(s) - 0.5, 0, width - 1)
        sy = np.clip(float(y1) + (np.arange(oh) + 0.5) / float(s) - 0.5, 0, height - 1)
        x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
        x1i, y1i = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
        fx, fy = (sx - x0)[None, :, None], (sy - y0)[:, None, None]
        top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1i] * fx
        bottom = image[y1i][:, x0] * (1 - fx) + image[y1i][:, x1i] * fx
        out[m, :, :oh, :ow] = crop_resize_normalise(top * (1 - fy) + bottom * fy, mean, std, bgr_to_rgb)
    return out


def crop_resize_warp_affine_reference(image, chips, scales, out_hw, mean, std, bgr_to_rgb=True) -> np.ndarray:
    """cv2.warpAffine (inverse map, bilinear, replicated border) on the float32 image. OpenCV quantises
    sub-pixel positions to 1/32 pixel, so compare with a tolerance that allows for it."""
    image = np.asarray(image, np.float32)
    chips = np.asarray(chips, np.float32).reshape(-1, 4)
    scales = np.broadcast_to(np.asarray(scales, np.float32), (len(chips),))
    out = np.zeros((len(chips), 3) + tuple(out_hw))
    for m, ((x1, y1, _, _), s, oh, ow) in enumerate(zip(chips, scales, *crop_resize_sizes(chips, scales))):
        s, x1, y1 = float(s), float(x1), float(y1)
        inverse = np.array([[1 / s, 0, x1 + 0.5 / s - 0.5], [0, 1 / s, y1 + 0.5 / s - 0.5]])
        warped = cv2.warpAffine(image, inverse, (int(ow), int(oh)), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        out[m, :, :oh, :ow] = crop_resize_normalise(warped.astype(np.float64), mean, std, bgr_to_rgb)
    return out


def crop_resize_cv2_resize_reference(image, chip, out_hw_chip, slot_hw, mean, std, bgr_to_rgb=True) -> np.ndarray:
    """cv2.resize (bilinear) of the integer crop image[y1:y2, x1:x2] to out_hw_chip = (oh, ow), in a slot.
    Equals the op where the sampling never leaves the crop (whole-image chips, or integer downscales)."""
    x1, y1, x2, y2 = (int(v) for v in chip)
    crop = np.asarray(image, np.float32)[y1:y2, x1:x2]
    oh, ow = out_hw_chip
    resized = cv2.resize(crop, (ow, oh), interpolation=cv2.INTER_LINEAR).reshape(oh, ow, 3)
    out = np.zeros((3,) + tuple(slot_hw))
    out[:, :oh, :ow] = crop_resize_normalise(resized.astype(np.float64), mean, std, bgr_to_rgb)
    return out


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
    """docs/design.md "Soft-NMS", literally: a loop over the remaining boxes, float64 scores."""
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
    """docs/design.md "Focus stacking rules", box by box in float64: clip the box to its chip; keep it when the
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
