"""SNIPER-style chip sampling for training, and chip rendering (crop + resize + normalise + pad).

A chip lives in the RESIZED image of one training scale: origin (x0, y0) in resized pixels, size
chip_size x chip_size (padded where it runs past the image). Positive chips greedily cover the ground
truth that is valid at that scale (SNIP ranges in original pixels); negative chips cover false
positives of an early model that no positive chip covers. Candidate chip origins lie on a grid of
`grid_stride` resized pixels (SNIPER uses 32), plus the last position flush with the image border.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from runtime.geometry import resized_image_size, scale_factor  # one rule for training and inference

from model.labels import valid_range_mask

MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Chip:
    image_index: int     # index into CocoSet.images
    scale_index: int     # index into config["chips"]["scales"]
    factor: float        # resize factor original -> resized image
    x0: int              # chip origin in resized pixels
    y0: int
    size: int            # chip side in resized pixels (network input side)
    negative: bool = False


def candidate_origins(length: int, chip_size: int, grid_stride: int) -> np.ndarray:
    """Chip origins along one axis: 0, stride, ... and the last flush with the border."""
    if length <= chip_size:
        return np.zeros(1, np.int64)
    last = length - chip_size
    origins = list(range(0, last, grid_stride)) + [last]
    return np.asarray(origins, np.int64)


def cover_boxes(boxes, resized_hw, chip_size: int, grid_stride: int = 32) -> list[tuple[int, int]]:
    """Greedy SNIPER cover: chip origins (x0, y0) so that every box that fits in a chip is inside one.

    boxes (K,4) in resized pixels. Each round picks the candidate chip holding the most still-uncovered
    boxes (ties: the first in raster order) until no candidate covers an uncovered box.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return []
    h, w = int(resized_hw[0]), int(resized_hw[1])
    xs = candidate_origins(w, chip_size, grid_stride)
    ys = candidate_origins(h, chip_size, grid_stride)
    ox, oy = np.meshgrid(xs, ys)
    ox, oy = ox.ravel(), oy.ravel()
    # contains[c, k]: box k entirely inside candidate chip c (boxes are clipped to the image first,
    # so a box touching the image border counts as inside the chip at that border).
    bx = boxes.copy()
    bx[:, [0, 2]] = bx[:, [0, 2]].clip(0, w)
    bx[:, [1, 3]] = bx[:, [1, 3]].clip(0, h)
    contains = ((bx[None, :, 0] >= ox[:, None]) & (bx[None, :, 2] <= ox[:, None] + chip_size)
                & (bx[None, :, 1] >= oy[:, None]) & (bx[None, :, 3] <= oy[:, None] + chip_size))
    uncovered = contains.any(axis=0)
    chosen = []
    while uncovered.any():
        counts = (contains & uncovered[None, :]).sum(axis=1)
        best = int(np.argmax(counts))
        if counts[best] == 0:
            break
        chosen.append((int(ox[best]), int(oy[best])))
        uncovered &= ~contains[best]
    return chosen


def positive_chips(image_index: int, boxes_original, image_hw, scales, valid_ranges, chip_size: int = 512,
                   grid_stride: int = 32, always_whole_image_scales=()) -> list[Chip]:
    """Positive chips of one image at every scale. Scales listed in `always_whole_image_scales` whose
    resized image fits in one chip always get that chip (it trains the FocusPixel head on the
    inference-time view even when no box is valid at that scale)."""
    boxes = np.asarray(boxes_original, np.float64).reshape(-1, 4)
    h, w = image_hw
    chips = []
    for si, (scale, vrange) in enumerate(zip(scales, valid_ranges)):
        f = scale_factor(h, w, scale)
        rh, rw = resized_image_size(h, w, f)
        valid = boxes[valid_range_mask(boxes, vrange)] * f
        origins = cover_boxes(valid, (rh, rw), chip_size, grid_stride)
        if not origins and si in always_whole_image_scales and rh <= chip_size and rw <= chip_size:
            origins = [(0, 0)]
        chips += [Chip(image_index, si, f, x0, y0, chip_size) for x0, y0 in origins]
    return chips


def negative_chips(image_index: int, false_positives_resized, scale_index: int, factor: float, resized_hw,
                   positives: list[Chip], chip_size: int = 512, grid_stride: int = 32,
                   max_chips: int = 2) -> list[Chip]:
    """Chips covering false-positive boxes (resized pixels, one scale) that no positive chip of this
    image and scale already covers; at most `max_chips`, those covering the most false positives."""
    fps = np.asarray(false_positives_resized, np.float64).reshape(-1, 4)
    if len(fps) == 0:
        return []
    same = [c for c in positives if c.image_index == image_index and c.scale_index == scale_index]
    keep = np.ones(len(fps), bool)
    for c in same:
        keep &= ~((fps[:, 0] >= c.x0) & (fps[:, 2] <= c.x0 + c.size)
                  & (fps[:, 1] >= c.y0) & (fps[:, 3] <= c.y0 + c.size))
    origins = cover_boxes(fps[keep], resized_hw, chip_size, grid_stride)[:max_chips]
    return [Chip(image_index, scale_index, factor, x0, y0, chip_size, negative=True) for x0, y0 in origins]


def render_chip(image_bgr: np.ndarray, factor: float, x0: float, y0: float, out_h: int, out_w: int,
                flip: bool = False) -> np.ndarray:
    """Crop the chip [x0, x0+out_w) x [y0, y0+out_h) of the image resized by `factor`, in one warp.

    Returns float32 (3, out_h, out_w) RGB normalised per docs/contract.md; padding is 0 after
    normalisation. `flip` mirrors the chip horizontally.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"image_bgr: expected HxWx3 uint8, got {image_bgr.shape} {image_bgr.dtype}")
    pad = tuple(float(255 * v) for v in MEAN_RGB[::-1])  # BGR mean pixel -> 0 once normalised
    src, f = image_bgr, factor
    if factor < 1:
        # Downscaling: area-average first (warpAffine has no INTER_AREA), then a pure shift/flip; to the
        # size of the resize rule (cv2's own fx/fy size rounds half to even).
        rh, rw = resized_image_size(*image_bgr.shape[:2], factor)
        src = cv2.resize(image_bgr, (max(1, rw), max(1, rh)), interpolation=cv2.INTER_AREA)
        f = 1.0
    out = cv2.warpAffine(src, _chip_affine(f, x0, y0, out_w, flip), (out_w, out_h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=pad)
    return normalize_rgb(out)


def _chip_affine(f: float, x0: float, y0: float, out_w: int, flip: bool) -> np.ndarray:
    """Source pixel index -> chip pixel index for X' = f * X - x0 in continuous coordinates (pixel
    centres at i + 0.5, as cv2.resize), mirrored as X' -> out_w - X' when flipping."""
    if flip:
        return np.array([[-f, 0, out_w + x0 - 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5 - y0]], np.float64)
    return np.array([[f, 0, 0.5 * f - 0.5 - x0], [0, f, 0.5 * f - 0.5 - y0]], np.float64)


def normalize_rgb(image_bgr: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 BGR -> (3, H, W) float32 RGB, (x/255 - mean) / std."""
    x = image_bgr[:, :, ::-1].astype(np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(MEAN_RGB, np.float32)) / np.asarray(STD_RGB, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def chip_boxes(boxes_original, factor: float, x0: float, y0: float, out_w: int, flip: bool = False) -> np.ndarray:
    """Boxes from original pixels to chip pixels (unclipped)."""
    b = np.asarray(boxes_original, np.float64).reshape(-1, 4) * factor
    b[:, [0, 2]] -= x0
    b[:, [1, 3]] -= y0
    if flip:
        b = np.stack([out_w - b[:, 2], b[:, 1], out_w - b[:, 0], b[:, 3]], axis=1)
    return b

