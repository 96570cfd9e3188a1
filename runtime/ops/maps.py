"""Map ops: dilate, connected_components, focus_chips (Algorithm 1 of docs/design.md), chips_to_image,
paint_boxes (csrc/ops/{dilate,connected_components,focus_chips,paint_boxes})."""
from __future__ import annotations

import numpy as np

from ._checks import (_array, _check_boxes, _cuda_ext, _cuda_stream, _ext, _fail_if, _host_array, _int_at_least,
                      _is_cuda, _number, _odd_size, _per_item, _ptr, _same_device, _same_kind, _value_checks,
                      to_device)


_MAX_CELLS = 2**31 - 1  # the kernels index map cells with int32
MERGE_RULES = ("touching", "cheaper")  # Algorithm 1's step 5 (csrc/ops/focus_chips.h: FocusMerge)
DEFAULT_MERGE = "touching"  # the paper's: a chip_params entry without "merge" means it
_MAX_CHEAPER_COMPONENTS = 65535  # the cheaper rule's pair keys hold a pair index in 32 bits


def _merge_rule(merge, shape) -> int:
    """The merge rule's code for the kernels (its index in MERGE_RULES); checks the map's size for it."""
    if merge not in MERGE_RULES:
        raise ValueError(f"merge: expected one of {list(MERGE_RULES)}, got {merge!r}")
    if merge == "cheaper" and _max_components(int(shape[-2]), int(shape[-1])) > _MAX_CHEAPER_COMPONENTS:
        raise ValueError(f"merge: 'cheaper' takes maps of up to {_MAX_CHEAPER_COMPONENTS} possible components "
                         f"(about 510 x 510 cells), got {shape[-2]} x {shape[-1]}")
    return MERGE_RULES.index(merge)


def _check_cells(shape, name: str):
    if int(shape[-2]) * int(shape[-1]) > _MAX_CELLS:  # (np.prod costs more than a small dilate)
        raise ValueError(f"{name}: a map of {shape[-2]} x {shape[-1]} cells exceeds the int32 index range")


def dilate(mask, d: int):
    """Binary dilation of an (H, W) uint8 mask (any nonzero is on) with a d x d square, d odd >= 1.

    Pixels outside the map are background (cv2.dilate with BORDER_CONSTANT 0). Returns (H, W) uint8 0/1.
    """
    d = _odd_size(d, "d")
    m = _array(mask, "mask", (np.uint8,), ndim=2)
    _check_cells(m.shape, "mask")
    height, width = m.shape
    if _is_cuda(m):
        import torch
        out = torch.empty_like(m)
        if m.numel():
            _cuda_ext().dilate_cuda(m.data_ptr(), height, width, d, out.data_ptr(), _cuda_stream(m))
        return out
    return _same_kind(_ext().dilate_cpu(m, d), mask)


def _max_components(height: int, width: int) -> int:
    return ((height + 1) // 2) * ((width + 1) // 2)


def connected_components(mask):
    """8-connected components of an (H, W) uint8 mask (any nonzero is foreground).

    Returns labels (H, W) int32 (0 background, components 1..C numbered in raster order of each
    component's first pixel, as cv2.connectedComponents with ccltype=cv2.CCL_WU numbers them) and
    boxes (C, 4) int32 [x1, y1, x2, y2) in cells. On CUDA the count is the one value read by the host.
    """
    m = _array(mask, "mask", (np.uint8,), ndim=2)
    _check_cells(m.shape, "mask")
    height, width = m.shape
    if _is_cuda(m):
        import torch
        labels = torch.empty((height, width), dtype=torch.int32, device=m.device)  # every cell written
        boxes = torch.empty((_max_components(height, width), 4), dtype=torch.int32, device=m.device)
        if m.numel() == 0:
            return labels, boxes[:0]
        count = torch.empty(1, dtype=torch.int32, device=m.device)
        _cuda_ext().connected_components_cuda(m.data_ptr(), height, width, labels.data_ptr(), boxes.data_ptr(),
                                              count.data_ptr(), _cuda_stream(m))
        return labels, boxes[: int(count.item())]
    labels, boxes = _ext().connected_components_cpu(m)
    return _same_kind(labels, mask), _same_kind(boxes, mask)


def _focus_chips(probs, valid_hw: np.ndarray, threshold, dilation, min_size, merge, name: str, like):
    """Algorithm 1 over a (B, H, W) float32 batch (checked); returns chips (M, 4), batch_index (M,)."""
    threshold = _number(threshold, "threshold")
    dilation = _odd_size(dilation, "dilation")
    min_size = _int_at_least(min_size, "min_size", 1)
    rule = _merge_rule(merge, probs.shape)
    batch, height, width = probs.shape
    if _is_cuda(probs):
        import torch
        device = probs.device
        rows = batch * _max_components(height, width)
        chips = torch.empty((rows, 4), dtype=torch.int32, device=device)
        batch_index = torch.empty((rows,), dtype=torch.int32, device=device)
        if batch == 0 or height * width == 0:
            return chips[:0], batch_index[:0]
        valid = to_device(np.asarray(valid_hw, np.int32), device)
        status = torch.empty(2, dtype=torch.int32, device=device)
        _cuda_ext().focus_chips_batched_cuda(probs.data_ptr(), valid.data_ptr(), batch, height, width, threshold,
                                             dilation, min_size, rule, chips.data_ptr(), batch_index.data_ptr(),
                                             status.data_ptr(), _cuda_stream(probs))
        count, bad = (int(v) for v in status.cpu())  # the one host sync
        if bad:
            raise ValueError(f"{name}: contains NaN or inf")
        return chips[:count], batch_index[:count]
    chips, batch_index, bad_map = _ext().focus_chips_batched_cpu(probs, valid_hw, threshold, dilation, min_size,
                                                                 rule)
    if bad_map >= 0:
        where = f" (map {bad_map})" if name == "probs" else ""
        raise ValueError(f"{name}: contains NaN or inf{where}")
    return _same_kind(chips, like), _same_kind(batch_index, like)


def focus_chips(prob, threshold: float, dilation: int, min_size: int, merge: str = DEFAULT_MERGE):
    """FocusChips, Algorithm 1 of docs/design.md, on one (H, W) float32 focus map.

    binary = prob >= threshold (compared in float32); dilate with a dilation x dilation square; one
    enclosing rectangle per 8-connected component; grow each about its centre to at least
    min_size x min_size cells (odd extra cell to the right/bottom), shifted inside the map (clipped only
    when the map is smaller); then merge (step 5):
      "touching" (the paper's): paint the rectangles and repeat until their number stops changing.
        Returns (M, 4) int32 [x1, y1, x2, y2) in map cells, sorted by (y1, x1).
      "cheaper": while some pair of touching rectangles (cells equal or 8-adjacent) has a grown enclosing
        rectangle of no more cells than the two together, merge the pair that saves the most cells (ties:
        the first pair (i, j) in the current order; the merged rectangle takes i's place, the last one
        j's). Rectangles may overlap; sorted by (y1, x1, y2, x2).
    NaN/inf in prob: ValueError. On CUDA this is focus_chips_batched with a batch of one.
    """
    p = _array(prob, "prob", (np.float32,), ndim=2)
    _check_cells(p.shape, "prob")
    valid = np.array([p.shape], dtype=np.int32)
    chips, _ = _focus_chips(p[None], valid, threshold, dilation, min_size, merge, "prob", prob)
    return chips


def focus_chips_batched(probs, valid_hw, threshold: float, dilation: int, min_size: int,
                        merge: str = DEFAULT_MERGE):
    """focus_chips over a batch: probs (B, H, W) float32, valid_hw (B, 2) ints, each map's valid region
    (rows/columns beyond it are padding, ignored: map b is probs[b, :h, :w]).

    Returns chips (M, 4) int32 in cells and batch_index (M,) int32, map by map in batch order, each map's
    chips as focus_chips gives them (merge: its step-5 rule). On CUDA: one launch over the batch, one thread
    block per map (sized for focus maps, ~100 x 130 cells at most), plus one launch that gathers the chips in
    batch order; valid_hw is checked on the host and the chip count is the one value the host reads.
    """
    p = _array(probs, "probs", (np.float32,), ndim=3)
    _check_cells(p.shape, "probs")
    valid = _host_array(valid_hw, "valid_hw")
    if valid.shape != (p.shape[0], 2):
        raise ValueError(f"valid_hw: expected shape ({p.shape[0]}, 2), got {valid.shape}")
    if valid.size and (not np.issubdtype(valid.dtype, np.integer)):
        raise TypeError(f"valid_hw: expected integers, got dtype {valid.dtype}")
    valid = valid.astype(np.int64).reshape(-1, 2)
    if ((valid < 0) | (valid > np.array(p.shape[1:]))).any():
        raise ValueError(f"valid_hw: each (h, w) must lie in [0, {tuple(p.shape[1:])}], got {valid.tolist()}")
    return _focus_chips(p, valid.astype(np.int32), threshold, dilation, min_size, merge, "probs", probs)


def chips_to_image(chips, stride, scale, input_hw, min_size: int, offset=(0, 0)):
    """Algorithm 1 step 6: chips (M, 4) int [x1, y1, x2, y2) in map cells -> (M, 4) float32 in ORIGINAL
    image pixels.

    Multiply by stride; clip to the scaled input's real size input_hw = (h, w) (the map may cover padding
    beyond it); where clipping made a side shorter than min(min_size * stride, input side), extend it
    back inside the input (away from the clipped border, never beyond [0, w] / [0, h]); divide by scale;
    add offset = (x0, y0). scale (M,), input_hw (M, 2) and offset (M, 2) may be given per chip.
    CUDA chips stay on the GPU (computed with torch ops, in float64 like the NumPy path).
    """
    c = _array(chips, "chips", (np.int32, np.int64), ndim=2, last_dim=4)
    stride = _number(stride, "stride", 0.0, exclusive=True)
    min_size = _int_at_least(min_size, "min_size", 1)
    count = c.shape[0]
    scale = _per_item(scale, "scale", count, None).reshape(-1, 1)
    hw = _per_item(input_hw, "input_hw", count, 2).reshape(-1, 2)
    offset = _per_item(offset, "offset", count, 2).reshape(-1, 2)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"scale: expected finite positive values, got {scale.ravel().tolist()}")
    if not (np.isfinite(hw).all() and (hw > 0).all()):
        raise ValueError(f"input_hw: expected positive sizes (h, w), got {hw.tolist()}")
    if not np.isfinite(offset).all():
        raise ValueError(f"offset: expected finite values, got {offset.tolist()}")
    if _is_cuda(c):
        import torch
        xp, px = torch, c.to(torch.float64) * stride
        scale, hw, offset = (to_device(a, c.device) for a in (scale, hw, offset))
    else:
        xp, px = np, c.astype(np.float64) * stride
    sides = []
    for lo, hi, size in ((px[:, 0], px[:, 2], hw[:, 1]), (px[:, 1], px[:, 3], hw[:, 0])):
        zero = size * 0  # torch.minimum/maximum take tensors only: bounds as arrays of size's shape
        target = xp.minimum(zero + min_size * stride, size)
        lo_c = xp.minimum(xp.maximum(lo, zero), size)
        hi_c = xp.minimum(xp.maximum(hi, zero), size)
        short = (hi_c - lo_c) < target
        cut_high, cut_low = hi > size, lo < 0
        # A side cut at the far border grows back towards 0, one cut at 0 towards the far border.
        sides.append(xp.where(short & cut_high, xp.maximum(hi_c - target, zero), lo_c))
        sides.append(xp.where(short & cut_low & ~cut_high, xp.minimum(lo_c + target, size), hi_c))
    x1, x2, y1, y2 = sides
    boxes = xp.stack([x1, y1, x2, y2], 1) / scale + xp.concatenate([offset, offset], 1)
    if xp is np:
        return _same_kind(boxes.astype(np.float32), chips)
    return boxes.to(torch.float32)


def paint_boxes(maps, boxes, index, stride, keep=None):
    """Detection-guided FocusPixels: maps (B, H, W) float32 with the cells that boxes cover set to 1.

    boxes (K, 4) float32 [x1, y1, x2, y2] in input pixels of map index[k] (K,) int64; a box covers the
    cells [floor(x1 / stride), ceil(x2 / stride)) x [floor(y1 / stride), ceil(y2 / stride)), clipped to
    the map (a box of zero width or height covers none). keep (K,) bool, optional: only those boxes
    paint. Returns a new array; maps is unchanged. On CUDA one launch (one thread per box) and no host
    read beyond the argument checks.
    """
    like = maps
    _same_device(maps=maps, boxes=boxes, index=index, keep=keep)
    m = _array(maps, "maps", (np.float32,), ndim=3)
    b = _array(boxes, "boxes", (np.float32,), ndim=2, last_dim=4)
    i = _array(index, "index", (np.int64,), ndim=1)
    stride = _number(stride, "stride", 0.0, exclusive=True)
    if i.shape[0] != b.shape[0]:
        raise ValueError(f"index: expected length {b.shape[0]} (one per box), got {i.shape[0]}")
    k = None if keep is None else _array(keep, "keep", (np.bool_,), ndim=1)
    if k is not None and k.shape[0] != b.shape[0]:
        raise ValueError(f"keep: expected length {b.shape[0]} (one per box), got {k.shape[0]}")
    _check_boxes(b)
    if b.shape[0] and _value_checks(i):  # (the kernels skip such boxes: safe to defer or skip)
        _fail_if(((i < 0) | (i >= m.shape[0])).any(), f"index: expected map indices in [0, {m.shape[0]})")
    if _is_cuda(m):
        out = m.clone()
        _cuda_ext().paint_boxes_cuda(out.data_ptr(), m.shape[0], m.shape[1], m.shape[2], b.data_ptr(), i.data_ptr(),
                                     _ptr(k), b.shape[0], stride, _cuda_stream(m))
        return out
    return _same_kind(_ext().paint_boxes_cpu(m, b, i, k, stride), like)
