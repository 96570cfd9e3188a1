"""Image geometry of the AutoFocus cascade, NumPy only: the one resize rule (docs/design.md "Resize
rule"), the scale factor, regions (a rectangle of one image at one factor), and how chips are merged,
snapped to their parent and aligned to the input grid. Imported by the cascade, model/ (training and
evaluation) and export/ (bucket fitting), so that all of them size an input the same way.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


def scale_factor(height: int, width: int, scale) -> float:
    """docs/design.md: min(min_side / short side, max_side / long side); min_side < 0 or None (a training
    scale such as (-1, 512)) bounds the long side only."""
    if height <= 0 or width <= 0:
        raise ValueError(f"height, width: expected positive sizes, got {height}x{width}")
    min_side, max_side = scale
    by_max = max_side / max(height, width)
    if min_side is None or min_side < 0:
        return float(by_max)
    return float(min(min_side / min(height, width), by_max))


def resized_length(length, factor: float) -> int:
    """The resize rule: floor(length * factor + 0.5) in float32 (half up, as ops.crop_resize sizes its
    chips and the kernels sample them). Every input size of the project is computed here."""
    return int(np.floor(np.float32(length) * np.float32(factor) + np.float32(0.5)))


def resized_size(box, factor: float) -> tuple:
    """(height, width) of a box [x1, y1, x2, y2] resized by factor, in float32 as ops.crop_resize computes
    it (the extents are taken in float32 first, like crop_resize's float32 chips)."""
    b = np.asarray(box, np.float32)
    return resized_length(b[3] - b[1], factor), resized_length(b[2] - b[0], factor)


def resized_image_size(height: int, width: int, factor: float) -> tuple:
    """(height, width) of a whole height x width image resized by factor (the resize rule)."""
    return resized_size((0, 0, width, height), factor)


def padded_length(length: int, divisor: int) -> int:
    """length rounded up to a multiple of divisor, at least divisor (a network input side)."""
    return max(divisor, math.ceil(length / divisor) * divisor)


@dataclass
class Region:
    image: int              # index into the call's images
    box: np.ndarray         # (4,) float32 [x1, y1, x2, y2] in original image pixels
    factor: float           # resize factor of its scale
    size: tuple             # (height, width) after resizing, as ops.crop_resize computes it


def region(image: int, box, factor: float) -> Region:
    """A Region of box (original pixels) at factor, sized by the resize rule."""
    box = np.asarray(box, np.float32)
    return Region(image, box, factor, resized_size(box, factor))


def align_to_grid(chips, step: float, image_hw) -> np.ndarray:
    """Chip sides moved outward onto multiples of step (original pixels), within [0, w] x [0, h].
    With step = size_divisor / factor, crop_resize samples a chip's input pixel u at x1 + (u + 0.5) / f
    - 0.5 = ((u + x1 f) + 0.5) / f - 0.5, which for x1 f a multiple of size_divisor is pixel u + x1 f of
    the whole image's input, on the same stride grid: inside the chip the network sees the pyramid's own
    pixels. Unaligned, small objects shift by a fraction of a stride and their scores move, either way
    (val: some 7-12 px objects scored 0.3-0.6 by the pyramid's scale 3 and 0.1-0.3 in chips that hold
    them whole, as many the other way round). (M, 4) -> (M, 4) float32."""
    b = np.asarray(chips, np.float64).reshape(-1, 4) / step
    h, w = image_hw
    eps = 1e-4  # a side already on the grid (up to float32 rounding) stays there
    low = np.floor(b[:, :2] + eps) * step
    high = np.ceil(b[:, 2:] - eps) * step
    out = np.concatenate([np.maximum(low, 0), np.minimum(high, [w, h])], 1)
    return out.astype(np.float32)


def merge_overlapping(chips) -> np.ndarray:
    """Replaces two overlapping chips by their enclosing rectangle while that has fewer pixels than the
    two together; repeats until no pair qualifies. (M, 4) float32 -> (M', 4) float32."""
    boxes = [np.asarray(c, np.float64) for c in chips]
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    merged = True
    while merged:
        merged = False
        for i, j in itertools.combinations(range(len(boxes)), 2):
            a, b = boxes[i], boxes[j]
            if min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]):
                union = np.array([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])
                if area(union) < area(a) + area(b):
                    boxes[i] = union
                    del boxes[j]
                    merged = True
                    break
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def snap_to_parent(chips: np.ndarray, parents: np.ndarray, factors) -> np.ndarray:
    """Chip sides (M, 4) within one resized pixel (1 / factor) of their parent's sides (M, 4) are put on
    them. Clipping to the parent's resized size ((y2 - y1) * f rounded) lands up to half a pixel short
    of the parent's side in original pixels; left there, a chip flush with the image border would not
    count as on it, and focus stacking would drop the detections that touch that border. float32, the
    tolerance too."""
    chips, parents = np.asarray(chips, np.float32).reshape(-1, 4), np.asarray(parents, np.float32).reshape(-1, 4)
    tol = (1.0 / np.asarray(factors, np.float64)).astype(np.float32).reshape(-1, 1)
    return np.where(np.abs(chips - parents) <= tol, parents, chips).astype(np.float32)
