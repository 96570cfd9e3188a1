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
    """Algorithm 1 of DESIGN.md, steps 1-5, in plain Python + SciPy. Returns (M, 4) int32 sorted by (y1, x1)."""
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
