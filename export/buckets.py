"""Chip buckets: the small fixed set of (height, width) input shapes the engines are built for.

Every network input of the cascade (the whole image at scale 1, chips at the finer scales) is padded
up to the smallest-area bucket that holds it, and chips of one bucket run as one batch; TensorRT gets
one optimization profile per bucket.

Coverage is guaranteed by construction: resizing to (min_side, max_side) makes the short side <=
min_side and the long side <= max_side, so the whole image at scale s, and every chip inside it, fits
(ceil32(min_side), ceil32(max_side)) in landscape or portrait. Those 2 shapes per scale are always
buckets. The remaining ones (up to `max_buckets`) are chosen greedily, multiples of 64, to minimise the
pixels run over a sample of input sizes (`sizes`; by default the sizes the chip rules allow for the
synthetic data's image sizes, see `rule_sizes`). Deterministic: same arguments, same buckets.

    python export/buckets.py [--annotations data/val/annotations.json]
prints the buckets and their padding waste on chips derived from a split's ground truth.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from model.config import load_config
from runtime import ops
from runtime.geometry import resized_image_size, resized_size, scale_factor, snap_to_parent

SIZE_DIVISOR = 32
FOCUS_STRIDE = 16
# The scales and, per transition (scale s -> s+1), the FocusPixel threshold t, dilation d and min chip
# size k in stride-16 cells: the shipped model's own, model/configs/default.json "inference" (their one
# definition; chosen with benchmarks/sweep.py), which also go to bundle.json.
_INFERENCE = load_config()["inference"]
DEFAULT_SCALES = tuple(tuple(s) for s in _INFERENCE["scales"])
DEFAULT_CHIP_PARAMS = tuple(dict(c) for c in _INFERENCE["chip_params"])
# The synthetic data's image sizes (model/synth.py): width 560-720, height 400-520, 15% portrait.
SYNTH_WIDTHS = (560, 720)
SYNTH_HEIGHTS = (400, 520)
MAX_BUCKETS = 16
SMALL_OBJECT_PX = (5.0, 64.0)  # FocusPixel "small" rule (docs/design.md): sqrt(area after scaling)


def ceil_to(x, multiple: int):
    return -(-np.asarray(x) // multiple) * multiple


def resized(height: float, width: float, factor: float) -> tuple[int, int]:
    """The runtime's resize rule (runtime.geometry), at least one pixel a side."""
    h, w = resized_image_size(height, width, factor)
    return max(1, h), max(1, w)


def _check_scales(scales):
    scales = [tuple(float(v) for v in s) for s in scales]
    if not scales or any(len(s) != 2 or not 0 < s[0] <= s[1] for s in scales):
        raise ValueError(f"scales: expected [(min_side, max_side), ...] with 0 < min_side <= max_side, got {scales}")
    return scales


def _check_buckets(buckets) -> np.ndarray:
    b = np.asarray(buckets, dtype=np.int64).reshape(-1, 2) if len(buckets) else np.zeros((0, 2), np.int64)
    if b.shape[0] == 0:
        raise ValueError("buckets: expected at least one (height, width) bucket")
    if (b <= 0).any():
        raise ValueError(f"buckets: sides must be positive, got {b.tolist()}")
    return b


def assign_bucket(height: int, width: int, buckets) -> int:
    """Index of the smallest-area bucket with bucket_h >= height and bucket_w >= width (the first in
    `buckets` order among equal areas). ValueError when none holds it."""
    if height <= 0 or width <= 0:
        raise ValueError(f"height, width: expected positive sizes, got {height}x{width}")
    b = _check_buckets(buckets)
    fits = (b[:, 0] >= height) & (b[:, 1] >= width)
    if not fits.any():
        raise ValueError(f"chip {height}x{width} (h x w) fits no bucket; the largest are "
                         f"{sorted(map(tuple, b.tolist()), key=lambda s: -s[0] * s[1])[:3]}: rebuild the "
                         "bundle with buckets that cover the scales (export/buckets.py)")
    area = np.where(fits, b[:, 0] * b[:, 1], np.iinfo(np.int64).max)
    return int(np.argmin(area))


def assign_buckets(sizes, buckets) -> np.ndarray:
    """assign_bucket for an (N, 2) array of (height, width); -1 where no bucket holds the size."""
    s = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    b = _check_buckets(buckets)
    fits = (b[None, :, 0] >= s[:, None, 0]) & (b[None, :, 1] >= s[:, None, 1])
    area = np.where(fits, (b[:, 0] * b[:, 1])[None], np.iinfo(np.int64).max)
    idx = np.argmin(area, axis=1) if len(b) else np.zeros(len(s), np.int64)
    return np.where(fits.any(axis=1), idx, -1)


def padding_waste(sizes, buckets) -> float:
    """Pixels run / pixels needed when each (height, width) in `sizes` is padded to its bucket.
    1.0 = no waste. ValueError when a size fits no bucket; 1.0 for no sizes."""
    s = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    if len(s) == 0:
        return 1.0
    if (s <= 0).any():
        raise ValueError("sizes: expected positive (height, width) pairs")
    b = _check_buckets(buckets)
    idx = assign_buckets(s, b)
    if (idx < 0).any():
        h, w = s[np.argmax(idx < 0)]
        assign_bucket(int(h), int(w), b)  # raises with the message
    run = (b[idx, 0] * b[idx, 1]).sum()
    return float(run / (s[:, 0] * s[:, 1]).sum())


# ------------------------------------------------------------------------------ sizes the rules allow

def synth_image_sizes(step: int = 8) -> list[tuple[int, int]]:
    """(height, width) grid over the synthetic data's range, landscape and portrait."""
    sizes = [(h, w) for w in range(SYNTH_WIDTHS[0], SYNTH_WIDTHS[1] + 1, step)
             for h in range(SYNTH_HEIGHTS[0], SYNTH_HEIGHTS[1] + 1, step)]
    return sizes + [(w, h) for h, w in sizes]


def min_chip_px(image_hw, scales, chip_params, scale_index: int) -> tuple[int, int]:
    """Smallest (h, w) a chip can have at scale `scale_index` (>= 1): k*16 px of the coarser scale's
    input (or that whole input where it is smaller), resized by the finer scale's factor."""
    h, w = image_hw
    f_coarse = scale_factor(h, w, scales[scale_index - 1])
    f_fine = scale_factor(h, w, scales[scale_index])
    k_px = chip_params[scale_index - 1]["min_size"] * FOCUS_STRIDE
    ch, cw = resized(h, w, f_coarse)
    side_h, side_w = min(k_px, ch) / f_coarse, min(k_px, cw) / f_coarse  # original pixels
    return resized(side_h, side_w, f_fine)


def rule_sizes(scales=DEFAULT_SCALES, chip_params=DEFAULT_CHIP_PARAMS, image_sizes=None,
               steps: int = 6, coarse_scale=None) -> np.ndarray:
    """Network input sizes the cascade can produce: per image size, the whole image at scale 1 (and at
    AutoFocus's coarse_scale where one is set) and, at each finer scale, chips whose height and width
    each run over `steps` values from the minimum chip to the whole (resized) image. (N, 2) int64
    (height, width)."""
    scales = _check_scales(scales)
    coarse = _check_scales([coarse_scale]) if coarse_scale is not None else []
    image_sizes = synth_image_sizes(16) if image_sizes is None else image_sizes
    out = []
    for h, w in image_sizes:
        out += [resized(h, w, scale_factor(h, w, s)) for s in [scales[0], *coarse]]
        for s in range(1, len(scales)):
            full_h, full_w = resized(h, w, scale_factor(h, w, scales[s]))
            min_h, min_w = min_chip_px((h, w), scales, chip_params, s)
            for ch in np.linspace(min_h, full_h, steps):
                for cw in np.linspace(min_w, full_w, steps):
                    out.append((int(round(ch)), int(round(cw))))
    return np.asarray(out, dtype=np.int64)


def scale_bound_buckets(scales=DEFAULT_SCALES) -> list[tuple[int, int]]:
    """Per scale, (ceil32(min_side), ceil32(max_side)) and its transpose: together they hold every
    image resized to any of the scales, hence every chip."""
    out = []
    for lo, hi in _check_scales(scales):
        lo32, hi32 = int(ceil_to(math.ceil(lo), SIZE_DIVISOR)), int(ceil_to(math.ceil(hi), SIZE_DIVISOR))
        for b in ((lo32, hi32), (hi32, lo32)):
            if b not in out:
                out.append(b)
    return out


def make_buckets(scales=DEFAULT_SCALES, chip_params=DEFAULT_CHIP_PARAMS, sizes=None,
                 max_buckets: int = MAX_BUCKETS, multiple: int = 64, image_sizes=None,
                 coarse_scale=None) -> list[tuple[int, int]]:
    """The bucket set: the scale-bound buckets (coverage; coarse_scale's too where set) plus greedily
    chosen multiples of `multiple` that most reduce the pixels run over `sizes` ((N, 2) heights/widths;
    default rule_sizes(...)), until max_buckets or no gain. Unused greedy picks are dropped. Sorted by
    area, then height."""
    if multiple % SIZE_DIVISOR:
        raise ValueError(f"multiple: expected a multiple of {SIZE_DIVISOR}, got {multiple}")
    required = scale_bound_buckets([*scales, *([coarse_scale] if coarse_scale is not None else [])])
    if max_buckets < len(required):
        raise ValueError(f"max_buckets: the scales need at least {len(required)} buckets to cover every "
                         f"chip, got {max_buckets}")
    s = (rule_sizes(scales, chip_params, image_sizes, coarse_scale=coarse_scale) if sizes is None
         else np.asarray(sizes, np.int64).reshape(-1, 2))
    # Buckets are multiples of 32, so a size fits exactly when its 32-padded size does.
    uniq, counts = np.unique(ceil_to(s, SIZE_DIVISOR), axis=0, return_counts=True)
    top = max(b for bucket in required for b in bucket)
    sides = np.arange(multiple, int(ceil_to(top, multiple)) + 1, multiple)
    cand = np.array([(h, w) for h in sides for w in sides], dtype=np.int64)
    cand_area = cand[:, 0] * cand[:, 1]
    fits = (cand[None, :, 0] >= uniq[:, None, 0]) & (cand[None, :, 1] >= uniq[:, None, 1])  # (N, C)
    chosen = list(required)

    def cost_per_size(buckets):
        b = np.asarray(buckets, np.int64)
        f = (b[None, :, 0] >= uniq[:, None, 0]) & (b[None, :, 1] >= uniq[:, None, 1])
        return np.where(f, (b[:, 0] * b[:, 1])[None], np.iinfo(np.int64).max // 4).min(axis=1)

    current = cost_per_size(chosen)
    while len(chosen) < max_buckets:
        new = np.minimum(current[:, None], np.where(fits, cand_area[None], np.iinfo(np.int64).max // 4))
        gain = ((current[:, None] - new) * counts[:, None]).sum(axis=0)
        best = int(np.argmax(gain))  # first max: candidates are ordered, so ties break deterministically
        if gain[best] <= 0:
            break
        chosen.append(tuple(int(v) for v in cand[best]))
        current = new[:, best]
    chosen = _refine_by_swaps(chosen, len(required), uniq, counts, cand, fits)
    # Drop picks that later picks made redundant (never the smallest fit of any size).
    used = set(assign_buckets(uniq, chosen).tolist())
    kept = [b for i, b in enumerate(chosen) if b in required or i in used]
    return sorted(kept, key=lambda b: (b[0] * b[1], b[0], b[1]))


def _refine_by_swaps(chosen, n_fixed, uniq, counts, cand, fits, rounds: int = 10):
    """Local search after the greedy pass: replace one free bucket by the candidate that lowers the
    pixels run the most, while any swap helps (greedy picks made early can be poor later)."""
    big = np.iinfo(np.int64).max // 4
    cand_cost = np.where(fits, (cand[:, 0] * cand[:, 1])[None], big)            # (N, C)
    index = {tuple(int(v) for v in c): i for i, c in enumerate(cand)}
    chosen = list(chosen)

    def total(costs):
        return int((costs.min(axis=1) * counts).sum())

    for _ in range(rounds):
        improved = False
        for slot in range(n_fixed, len(chosen)):
            others = [c for i, c in enumerate(chosen) if i != slot]
            cols = [index[c] if c in index else None for c in others]
            fixed_cost = np.full(len(uniq), big, np.int64)
            for c, col in zip(others, cols):
                if col is None:  # a required bucket off the 64-grid
                    f = (c[0] >= uniq[:, 0]) & (c[1] >= uniq[:, 1])
                    fixed_cost = np.minimum(fixed_cost, np.where(f, c[0] * c[1], big))
                else:
                    fixed_cost = np.minimum(fixed_cost, cand_cost[:, col])
            totals = (np.minimum(fixed_cost[:, None], cand_cost) * counts[:, None]).sum(axis=0)
            best = int(np.argmin(totals))
            current = total(np.stack([fixed_cost, np.where(
                (chosen[slot][0] >= uniq[:, 0]) & (chosen[slot][1] >= uniq[:, 1]),
                chosen[slot][0] * chosen[slot][1], big)], axis=1))
            if totals[best] < current:
                chosen[slot] = tuple(int(v) for v in cand[best])
                improved = True
        if not improved:
            break
    return chosen


def default_buckets(scales=DEFAULT_SCALES, chip_params=DEFAULT_CHIP_PARAMS,
                    coarse_scale=None) -> list[tuple[int, int]]:
    """The bundle's buckets: make_buckets(scales, chip_params, coarse_scale=...), fitted to the sizes the
    rules allow."""
    return make_buckets(scales, chip_params, coarse_scale=coarse_scale)


def max_batch_per_bucket(buckets, max_batch: int, reference_px: int = 512 * 512) -> list[int]:
    """Largest batch per bucket: `max_batch` chips of 512 x 512 pixels' worth, at least 1, at most
    max_batch (so a profile's largest input stays within the same memory whatever the bucket)."""
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")
    return [max(1, min(max_batch, (max_batch * reference_px) // (h * w))) for h, w in buckets]


# ------------------------------------------------------------- realistic chips from ground-truth boxes

def _focus_chips_cells(prob: np.ndarray, threshold: float, dilation: int, min_size: int,
                       merge: str) -> np.ndarray:
    """Algorithm 1 in map cells: runtime.ops.focus_chips, the engine's own."""
    return np.asarray(ops.focus_chips(prob.astype(np.float32), threshold, dilation, min_size, merge))


def _paint_focus(boxes: np.ndarray, region, factor: float, map_hw) -> np.ndarray:
    """Stride-16 map of a region resized by factor: 1 on cells touched by a small box (FocusPixel rule)."""
    prob = np.zeros(map_hw, np.float32)
    x0, y0, x1, y1 = region
    if len(boxes) == 0:
        return prob
    b = boxes.copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], x0, x1) - x0
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], y0, y1) - y0
    b *= factor
    side = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
    for (bx1, by1, bx2, by2), s in zip(b, side):
        if SMALL_OBJECT_PX[0] < s < SMALL_OBJECT_PX[1]:
            prob[int(by1 // FOCUS_STRIDE):int(math.ceil(by2 / FOCUS_STRIDE)),
                 int(bx1 // FOCUS_STRIDE):int(math.ceil(bx2 / FOCUS_STRIDE))] = 1.0
    return prob


def _chip_regions(cells: np.ndarray, region, factor: float, input_hw, min_size: int) -> np.ndarray:
    """Cells of a region's focus map -> chips in original pixels, by the engine's own code (the cascade's
    focus_chips_batch): ops.chips_to_image (clipped to the input, grown back to min_size cells) and
    geometry.snap_to_parent, with the factor and origin in float32 as the cascade sends them."""
    cells = np.asarray(cells, np.int32).reshape(-1, 4)
    origin = np.array(region[:2], np.float32)
    chips = ops.chips_to_image(cells, FOCUS_STRIDE, np.float32(factor), input_hw, min_size, origin)
    parents = np.tile(np.asarray(region, np.float32), (len(chips), 1))
    return snap_to_parent(chips, parents, np.full(len(chips), factor))


def cascade_input_sizes(image_hw, boxes, scales=DEFAULT_SCALES, chip_params=DEFAULT_CHIP_PARAMS) -> list:
    """Network input sizes (h, w) the cascade runs for one image when each focus map is 1 exactly on
    the cells of the ground-truth boxes that count as small at that scale (a perfect FocusPixel head):
    the whole image at scale 1, then the chips Algorithm 1 gives at each finer scale."""
    scales = _check_scales(scales)
    h, w = image_hw
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    factors = [scale_factor(h, w, s) for s in scales]
    sizes = [resized(h, w, factors[0])]
    regions = [(0.0, 0.0, float(w), float(h))]
    for s in range(1, len(scales)):
        params = chip_params[s - 1]
        finer = []
        for region in regions:
            rh, rw = resized_size(region, factors[s - 1])
            map_hw = (math.ceil(rh / FOCUS_STRIDE), math.ceil(rw / FOCUS_STRIDE))
            prob = _paint_focus(boxes, region, factors[s - 1], map_hw)
            cells = _focus_chips_cells(prob, params["threshold"], params["dilation"], params["min_size"],
                                       params.get("merge", ops.DEFAULT_MERGE))
            for chip in _chip_regions(cells, region, factors[s - 1], (rh, rw), params["min_size"]):
                size = resized_size(chip, factors[s])
                if min(size) >= 1:  # (the cascade drops a chip that resizes to nothing)
                    finer.append(tuple(float(v) for v in chip))
                    sizes.append(size)
        regions = finer
    return sizes


def sizes_from_annotations(path, scales=DEFAULT_SCALES, chip_params=DEFAULT_CHIP_PARAMS) -> np.ndarray:
    """cascade_input_sizes over every image of a COCO annotation file: (N, 2) int64 (h, w)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"annotations: no such file {path} (generate the split with `python -m model.synth`)")
    coco = json.loads(path.read_text())
    by_image = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, bw, bh = a["bbox"]
        by_image[a["image_id"]].append((x, y, x + bw, y + bh))
    out = []
    for im in coco["images"]:
        out += cascade_input_sizes((im["height"], im["width"]), by_image[im["id"]], scales, chip_params)
    return np.asarray(out, np.int64).reshape(-1, 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Print the chip buckets and their padding waste.")
    p.add_argument("--annotations", type=Path, default=Path("data/val/annotations.json"),
                   help="COCO ground truth whose small boxes stand in for focus maps")
    p.add_argument("--fit", type=Path, default=None, metavar="ANNOTATIONS",
                   help="fit a new bucket set to the cascade inputs of this COCO file (else to the sizes the rules allow)")
    p.add_argument("--max-buckets", type=int, default=MAX_BUCKETS)
    args = p.parse_args(argv)
    if args.fit is not None:
        fit_sizes = sizes_from_annotations(args.fit)
        buckets = make_buckets(sizes=fit_sizes, max_buckets=args.max_buckets)
        print(f"fitted on {len(fit_sizes)} cascade inputs of {args.fit}: waste {padding_waste(fit_sizes, buckets):.3f}")
    else:
        buckets = default_buckets()
    print("buckets (h x w):", ", ".join(f"{h}x{w}" for h, w in buckets))
    print(f"padding waste, rule sizes (synthetic image range): {padding_waste(rule_sizes(), buckets):.3f}")
    if args.annotations.is_file():
        sizes = sizes_from_annotations(args.annotations)
        per_bucket = np.bincount(assign_buckets(sizes, buckets), minlength=len(buckets))
        print(f"padding waste, {len(sizes)} cascade inputs from {args.annotations}: "
              f"{padding_waste(sizes, buckets):.3f}; inputs per bucket: {per_bucket.tolist()}")
    else:
        print(f"{args.annotations} not found: no ground-truth waste measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
