"""Chips packed onto fixed canvases: few network-input shapes and full batches for a scale's chips.

Padding every chip into its own bucket runs many shapes and many partly empty inputs; on a GPU each
network call and each shape (a CUDA graph, a TensorRT profile) costs more than its pixels. Packing
instead places the chips of one scale of an engine call (all images together) side by side on a small
fixed set of canvas shapes (bundle.json "canvases", one or two a scale), a gutter of zeros between
neighbours, as UFPMP-Det packs foreground regions into one mosaic and Mondrian packs ROIs:

    pack(sizes, canvases, gutter, grid)      -> Packing: each chip's canvas and (x, y) offset
    canvases_for(bundle, scales, s)          -> the canvas shapes of scale s (the bundle's or the default)
    paste(crops, sizes, packing, ...)        -> the canvases as one (C, 3, H, W) batch
    owners(boxes, batch_index, rects, ...)   -> which placed chip each detection's centre lies in

The packer is MaxRects with best-short-side fit (Jylanki, "A thousand ways to pack the bin", 2010),
on a grid of `grid` input pixels (the network's size divisor, 32: a chip moved by a multiple of 32 keeps
its stride-8 detection and stride-16 focus cells, and the stride-32 features, on the same phase as
unpacked). Chips go largest first, each to the free rectangle of any open canvas that leaves the
shortest side over; when none holds it a new canvas opens, of the first declared shape that holds
it. A chip that fits no canvas shape gets a canvas of its own (`own_shape`, the cascade's bucket).
Each chip occupies its size plus the gutter, rounded up to the grid; the canvas counts the gutter as
room past its right and bottom sides, so a chip may touch the canvas border but never a neighbour.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_GUTTER = 32  # input pixels of zeros between neighbouring chips (measured: README "Packing")


@dataclass
class Packing:
    """Where each chip goes: canvas (n,) int64 index into shapes; offsets (n, 2) int64 (x, y) of its
    top-left corner in that canvas's input pixels; shapes (C, 2) int64 (height, width) of each canvas;
    own (C,) bool: a canvas made for one chip larger than every declared shape."""
    canvas: np.ndarray
    offsets: np.ndarray
    shapes: np.ndarray
    own: np.ndarray

    @property
    def count(self) -> int:
        return int(self.shapes.shape[0])


def _check_shapes(canvases) -> np.ndarray:
    try:
        c = np.asarray(canvases, dtype=np.float64).reshape(-1, 2) if len(canvases) else np.zeros((0, 2))
    except (TypeError, ValueError) as e:
        raise ValueError(f"canvases: expected a list of [height, width], got {canvases!r}") from e
    if not np.isfinite(c).all() or (c <= 0).any() or (c != np.round(c)).any():
        raise ValueError(f"canvases: expected positive integer [height, width] shapes, got {c.tolist()}")
    return c.astype(np.int64)


def _int_arg(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return int(value)


def pack(sizes, canvases, gutter: int = DEFAULT_GUTTER, grid: int = 32, own_shape=None) -> Packing:
    """Packs chips of (height, width) `sizes` (n, 2) ints >= 1 onto canvases of the `canvases` shapes
    (see the module docstring). own_shape(h, w) -> (H, W) is the canvas of a chip no declared shape
    holds (default: its size rounded up to the grid). Zero chips: zero canvases."""
    gutter, grid = _int_arg(gutter, "gutter", 0), _int_arg(grid, "grid", 1)
    shapes = _check_shapes(canvases)
    try:
        s = np.asarray(sizes, dtype=np.float64).reshape(-1, 2) if len(sizes) else np.zeros((0, 2))
    except (TypeError, ValueError) as e:
        raise ValueError(f"sizes: expected (n, 2) integer (height, width), got {sizes!r}") from e
    if not np.isfinite(s).all() or (s < 1).any() or (s != np.round(s)).any():
        raise ValueError(f"sizes: expected integer (height, width) >= 1, got {s.tolist()}")
    s = s.astype(np.int64)
    n = s.shape[0]
    # Grid units: a chip takes ceil((side + gutter) / grid) cells, a canvas holds floor((side + gutter)
    # / grid), so a chip's far side stays within the canvas and `gutter` away from its neighbours.
    need = -(-(s + gutter) // grid)
    room = (shapes + gutter) // grid
    fits = (room[None, :, 0] >= need[:, None, 0]) & (room[None, :, 1] >= need[:, None, 1])
    order = np.lexsort((np.arange(n), -(need[:, 0] * need[:, 1]), -need.max(1)))  # largest first
    canvas = np.full(n, -1, np.int64)
    offsets = np.zeros((n, 2), np.int64)
    out_shapes, own, free = [], [], []  # free: per canvas, (F, 4) [x, y, w, h] free rectangles, grid units
    for i in order:
        if not fits[i].any():  # larger than every shape: a canvas of its own
            h, w = (int(v) for v in s[i])
            shape = tuple(own_shape(h, w)) if own_shape is not None else (-(-h // grid) * grid, -(-w // grid) * grid)
            if shape[0] < h or shape[1] < w:
                raise ValueError(f"own_shape: {shape} does not hold a {h} x {w} chip")
            canvas[i] = len(out_shapes)
            out_shapes.append(shape)
            own.append(True)
            free.append(np.zeros((0, 4), np.int64))
            continue
        best = _best_fit(free, need[i])
        if best is None:  # a new canvas of the first declared shape holding it
            k = int(np.argmax(fits[i]))
            out_shapes.append(tuple(int(v) for v in shapes[k]))
            own.append(False)
            free.append(np.array([[0, 0, room[k, 1], room[k, 0]]], np.int64))
            best = (len(free) - 1, 0, 0)
        c, x, y = best
        canvas[i], offsets[i] = c, (x * grid, y * grid)
        free[c] = _split(free[c], x, y, int(need[i, 1]), int(need[i, 0]))
    return Packing(canvas, offsets, np.array(out_shapes, np.int64).reshape(-1, 2), np.array(own, bool))


def _best_fit(free: list, need) -> tuple | None:
    """(canvas, x, y) of the free rectangle (of any canvas) that holds need = (h, w) with the shortest
    side left over (then the longest, then the earliest canvas, top, left); None when none holds it."""
    h, w = int(need[0]), int(need[1])
    best, best_key = None, None
    for c, f in enumerate(free):
        if f.shape[0] == 0:
            continue
        ok = (f[:, 2] >= w) & (f[:, 3] >= h)
        if not ok.any():
            continue
        short = np.minimum(f[:, 2] - w, f[:, 3] - h)
        long = np.maximum(f[:, 2] - w, f[:, 3] - h)
        j = np.flatnonzero(ok)[np.lexsort((f[ok, 0], f[ok, 1], long[ok], short[ok]))[0]]
        key = (int(short[j]), int(long[j]), c, int(f[j, 1]), int(f[j, 0]))
        if best_key is None or key < best_key:
            best, best_key = (c, int(f[j, 0]), int(f[j, 1])), key
    return best


def _split(free: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """MaxRects update: every free rectangle that the placed one overlaps is replaced by its (up to four)
    maximal parts outside it; then rectangles inside another are dropped."""
    fx, fy, fw, fh = free.T
    hit = (x < fx + fw) & (x + w > fx) & (y < fy + fh) & (y + h > fy)
    f = free[hit]
    left = np.stack([f[:, 0], f[:, 1], x - f[:, 0], f[:, 3]], 1)
    right = np.stack([np.full(len(f), x + w), f[:, 1], f[:, 0] + f[:, 2] - (x + w), f[:, 3]], 1)
    top = np.stack([f[:, 0], f[:, 1], f[:, 2], y - f[:, 1]], 1)
    bottom = np.stack([f[:, 0], np.full(len(f), y + h), f[:, 2], f[:, 1] + f[:, 3] - (y + h)], 1)
    parts = np.concatenate([left, right, top, bottom])
    out = np.concatenate([free[~hit], parts[(parts[:, 2] > 0) & (parts[:, 3] > 0)]])
    if len(out) < 2:
        return out
    a, b = out[:, None, :], out[None, :, :]
    inside = ((a[..., 0] >= b[..., 0]) & (a[..., 1] >= b[..., 1]) & (a[..., 0] + a[..., 2] <= b[..., 0] + b[..., 2])
              & (a[..., 1] + a[..., 3] <= b[..., 1] + b[..., 3]))  # inside[i, j]: i inside j
    np.fill_diagonal(inside, False)
    same = inside & inside.T  # duplicates: keep the first
    drop = (inside & ~same).any(1) | np.triu(same, 1).any(0)
    return out[~drop]


# ------------------------------------------------------------------------------------ canvas shapes

def default_canvases(scales, size_divisor: int = 32) -> list:
    """Per scale, the two orientations of (ceil(min_side), ceil(max_side)) to size_divisor: the shapes
    that hold the whole image at that scale, and so every chip of it (export/buckets.py makes them
    buckets of every bundle); none for scale 1, whose inputs are whole images."""
    out = [[]]
    for min_side, max_side in list(scales)[1:]:
        h = int(-(-float(min_side) // size_divisor) * size_divisor)
        w = int(-(-float(max_side) // size_divisor) * size_divisor)
        out.append([[h, w], [w, h]] if h != w else [[h, w]])
    return out


def canvases_for(bundle, scales, scale_index: int) -> list:
    """The canvas shapes of scale_index: bundle.json's "canvases" when it has them for these scales,
    else default_canvases of the call's scales (an older bundle, or scales overridden per call)."""
    declared = (getattr(bundle, "canvases", None) or {}).get("shapes")
    if declared is not None and [list(map(float, s)) for s in bundle.scales] == [list(map(float, s)) for s in scales] \
            and len(declared) == len(scales):
        return [list(map(int, c)) for c in declared[scale_index]]
    return default_canvases(scales, bundle.input["size_divisor"])[scale_index]


def bundle_gutter(bundle) -> int:
    return int((getattr(bundle, "canvases", None) or {}).get("gutter", DEFAULT_GUTTER))


# ------------------------------------------------------------------------------------ tensors

def paste(crops: list, packing: Packing, canvas_index, shape):
    """The canvases canvas_index (all of `shape` (H, W)) as one (len(canvas_index), channels, H, W) batch,
    zeros where no chip lies: crops[m] ((channels, h, w) torch tensors, the chips' own sizes, in
    rows_of(packing, canvas_index) order) pasted at their offsets."""
    import torch
    rows = rows_of(packing, canvas_index)
    if len(crops) != len(rows):
        raise ValueError(f"crops: expected one per chip on these canvases ({len(rows)}), got {len(crops)}")
    slot = {int(c): k for k, c in enumerate(canvas_index)}
    if not crops:
        return torch.zeros((len(canvas_index), 3, *shape))
    out = torch.zeros((len(canvas_index), crops[0].shape[0], *shape), dtype=crops[0].dtype, device=crops[0].device)
    for crop, i in zip(crops, rows):  # one copy a chip (on CUDA a kernel each; a fused paste is a later step)
        (x, y), (h, w) = packing.offsets[i], crop.shape[1:]
        if y + h > shape[0] or x + w > shape[1]:
            raise ValueError(f"crops: a {h} x {w} chip at ({x}, {y}) does not fit a {shape[0]} x {shape[1]} canvas")
        out[slot[int(packing.canvas[i])], :, y:y + h, x:x + w] = crop
    return out


def rows_of(packing: Packing, canvas_index) -> np.ndarray:
    """The chips on the canvases canvas_index, by canvas (in canvas_index order), then chip index."""
    pos = np.full(packing.count, -1, np.int64)
    pos[np.asarray(canvas_index, np.int64)] = np.arange(len(canvas_index))
    on = np.flatnonzero(pos[packing.canvas] >= 0)
    return on[np.lexsort((on, pos[packing.canvas[on]]))]


def owners(boxes, batch_index, rects, rect_batch):
    """The placed chip holding each detection's box centre: boxes (D, 4) in canvas pixels, batch_index
    (D,) the canvas of each; rects (P, 4) [x1, y1, x2, y2) the chips' real extents on their canvases,
    rect_batch (P,) their canvas. Returns (owner (D,) int64 index into rects, 0 where none, found (D,)
    bool). Half-open rectangles: a centre on a shared edge (no gutter) belongs to one chip only."""
    import torch
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    inside = ((batch_index[:, None] == rect_batch[None, :]) & (cx[:, None] >= rects[None, :, 0])
              & (cx[:, None] < rects[None, :, 2]) & (cy[:, None] >= rects[None, :, 1]) & (cy[:, None] < rects[None, :, 3]))
    found = inside.any(1)
    return torch.argmax(inside.to(torch.uint8), 1), found


def size_classes(sizes) -> np.ndarray:
    """(n,) int64 class of each (height, width): chips of one class share a crop slot of the class's
    largest height and width, at most twice each chip's side (power-of-two classes per side), so one crop
    launch serves every chip of a class whatever their number, at <= 4x their pixels."""
    s = np.asarray(sizes, np.int64).reshape(-1, 2)
    bits = np.ceil(np.log2(np.maximum(s, 1))).astype(np.int64)
    return bits[:, 0] * 64 + bits[:, 1]


def paste_slots(flat, canvas_shape, crops, slot, offsets, sizes):
    """Writes the chips into canvases with one indexed copy, no host read: flat is the canvases' storage
    ((C * channels * H * W + 1,) with one spare element last), canvas_shape (C, channels, H, W); crops
    (n, channels, h, w) slots holding each chip at their top-left; slot (n,) int64 the canvas of each,
    offsets (n, 2) int64 its (x, y) there, sizes (n, 2) int64 its (height, width) (<= the slot's). Slot
    pixels past a chip's size go to the spare element. Chips must lie inside their canvas (Packing does)."""
    import torch
    n, ch, h, w = crops.shape
    if n == 0:
        return
    _, _, H, W = canvas_shape
    dev = crops.device
    ys = torch.arange(h, device=dev)[None, None, :, None]
    xs = torch.arange(w, device=dev)[None, None, None, :]
    cs = torch.arange(ch, device=dev)[None, :, None, None]
    at = lambda t: t[:, None, None, None]  # noqa: E731
    target = ((at(slot) * ch + cs) * H + at(offsets[:, 1]) + ys) * W + at(offsets[:, 0]) + xs
    inside = (ys < at(sizes[:, 0])) & (xs < at(sizes[:, 1]))
    target = torch.where(inside, target, flat.numel() - 1)
    flat.index_copy_(0, target.reshape(-1), crops.reshape(-1))
