"""Post-processing ops of the AutoFocus cascade, one Python entry for the C++ (CPU) and CUDA kernels.

NumPy arrays in, NumPy arrays out; torch tensors in, torch tensors out on the same device. NumPy arrays
and CPU tensors run the C++ kernels (tensors zero-copy through NumPy); CUDA tensors run the CUDA kernels
on the current torch stream and stay on the GPU. This module owns the argument checks a user sees:
bad input raises ValueError/TypeError naming the argument, before any kernel runs (inside
deferred_checks(), the value checks of CUDA tensors raise at the block's end instead).
"""
from __future__ import annotations

import contextvars
import sys
from contextlib import contextmanager

import numpy as np

try:
    from . import _C
    _IMPORT_ERROR = None
except ImportError as exc:  # the package still imports; calling an op says how to build
    _C = None
    _IMPORT_ERROR = exc


def _ext():
    if _C is None:
        raise ImportError(
            "runtime._C, the compiled ops, is not built: run `pip install -e .` in the repository "
            f"(needs cmake and a C++17 compiler; nvcc adds the CUDA kernels). Cause: {_IMPORT_ERROR}"
        )
    return _C


def with_cuda() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return _C is not None and bool(_C.with_cuda())


# ---------------------------------------------------------------------------------------------
# Argument handling shared by every op.

def _is_tensor(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _is_cuda(x) -> bool:
    return _is_tensor(x) and x.is_cuda


def _array(x, name: str, dtypes: tuple, ndim: int | None = None, last_dim: int | None = None):
    """Checks x (NumPy array or torch tensor) and returns it C-contiguous: a NumPy array for the CPU
    kernels, or a contiguous CUDA tensor for the CUDA kernels. dtypes: NumPy dtypes accepted."""
    if _is_tensor(x):
        try:
            dtype = np.dtype(str(x.dtype).replace("torch.", ""))
        except TypeError:  # bfloat16 and other dtypes NumPy cannot name
            raise TypeError(f"{name}: unsupported dtype {x.dtype}") from None
    elif isinstance(x, np.ndarray):
        dtype = x.dtype
    else:
        raise TypeError(f"{name}: expected a NumPy array or a torch tensor, got {type(x).__name__}")
    if dtype not in [np.dtype(d) for d in dtypes]:
        raise TypeError(f"{name}: expected dtype {' or '.join(np.dtype(d).name for d in dtypes)}, got {dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    if last_dim is not None and (x.ndim == 0 or x.shape[-1] != last_dim):
        raise ValueError(f"{name}: expected last dimension {last_dim}, got shape {tuple(x.shape)}")
    if _is_cuda(x):
        return x.contiguous()
    if _is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x)


def _same_kind(out: np.ndarray, like):
    """Returns a CPU result as the kind of `like`: a NumPy array, or a CPU torch tensor."""
    if _is_tensor(like):
        import torch
        return torch.from_numpy(np.ascontiguousarray(out))
    return out


def to_device(array: np.ndarray, device):
    """A host NumPy array as a tensor on device. To CUDA as a non-blocking copy: a plain .to("cuda")
    waits for the whole stream after the copy (a host synchronisation per small copy, each draining the
    GPU's queue). From pageable memory the driver stages the bytes before the call returns (CUDA's API
    synchronisation rules), so the array may go at once; pinning it first cost more than the copy
    (torch.profiler on an H100: ~0.1 ms a pin_memory call)."""
    import torch
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.to(device, non_blocking=torch.device(device).type == "cuda")


def _cuda_stream(t) -> int:
    import torch
    return torch.cuda.current_stream(t.device).cuda_stream


# Value checks of CUDA tensors need a device reduction and a host read: each one a synchronisation that
# drains the GPU's queue. Inside deferred_checks() they are queued as device flags instead and read in
# one copy when the block ends. Only checks whose failure cannot make a kernel touch memory out of
# bounds are deferred (the kernels clip or skip such values); shape, dtype and count checks never are.
_PENDING = contextvars.ContextVar("autofocus_pending_checks", default=None)


@contextmanager
def deferred_checks():
    """Within the block, a CUDA tensor's failed value check (NaN/inf, box corners, ranges) raises its
    ValueError when the block ends (one host read for all of them) rather than at the op; results of a
    block that raises must be discarded. NumPy and CPU tensors are checked at once as always."""
    pending: list = []
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
    if pending:  # reached only when the block did not raise
        import torch
        failed = torch.stack([flag.reshape(()) for flag, _ in pending]).cpu().numpy()
        for bad, (_, message) in zip(failed, pending):
            if bad:
                raise ValueError(message)


_TRUSTED = contextvars.ContextVar("autofocus_trusted_values", default=False)


@contextmanager
def trusted_values():
    """Within the block the ops skip the value checks of CUDA tensors (each costs a few kernel launches,
    and a GPU running small inputs is bound by launches): for a caller whose values are made by its own
    code or checked by the kernels that read them (the engine's cascade: decode's kernels flag NaN/inf
    network scores and decoded boxes, focus_chips NaN/inf focus maps, both read with their counts).
    Shape, dtype and count checks, and every check of host arrays, still run; the kernels stay in
    bounds whatever the values (see deferred_checks)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _value_checks(x) -> bool:
    """Whether to check x's values (False for a CUDA tensor inside trusted_values())."""
    return not (_TRUSTED.get() and _is_cuda(x))


def _fail_if(flag, message: str):
    """Raises ValueError(message) when flag (a bool array or tensor, 0-d) is true; deferred for CUDA
    tensors inside deferred_checks()."""
    pending = _PENDING.get()
    if pending is not None and _is_cuda(flag):
        pending.append((flag, message))
    elif bool(flag):
        raise ValueError(message)


def _check_finite(x, name: str):
    """NaN/inf scores or boxes make every downstream answer garbage: refuse them up front."""
    if not _value_checks(x):
        return
    _fail_if(~x.isfinite().all() if _is_tensor(x) else ~np.isfinite(x).all(), f"{name}: contains NaN or inf")


# ---------------------------------------------------------------------------------------------
# Map ops: dilate, connected_components, focus_chips (Algorithm 1 of DESIGN.md), chips_to_image,
# paint_boxes, crop_resize.

_MAX_CELLS = 2**31 - 1  # the kernels index map cells with int32


def _cuda_ext():
    ext = _ext()
    if not ext.with_cuda():
        raise RuntimeError("runtime._C was built without CUDA: CUDA tensors need the CUDA kernels (rebuild with nvcc)")
    return ext


def _int_at_least(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    return int(value)


def _odd_size(value, name: str) -> int:
    value = _int_at_least(value, name, 1)
    if value % 2 == 0:
        raise ValueError(f"{name}: expected an odd size >= 1 (a centred square), got {value}")
    return value


def _check_cells(shape, name: str):
    if int(shape[-2]) * int(shape[-1]) > _MAX_CELLS:  # (np.prod costs more than a small dilate)
        raise ValueError(f"{name}: a map of {shape[-2]} x {shape[-1]} cells exceeds the int32 index range")


def _host_array(x, name: str) -> np.ndarray:
    """A small parameter (list, tuple, NumPy array or tensor, any device) as a NumPy float64/int array."""
    if _is_tensor(x):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected numbers, got {type(x).__name__}") from None


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


def _focus_chips(probs, valid_hw: np.ndarray, threshold, dilation, min_size, name: str, like):
    """Algorithm 1 over a (B, H, W) float32 batch (checked); returns chips (M, 4), batch_index (M,)."""
    threshold = _number(threshold, "threshold")
    dilation = _odd_size(dilation, "dilation")
    min_size = _int_at_least(min_size, "min_size", 1)
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
                                             dilation, min_size, chips.data_ptr(), batch_index.data_ptr(),
                                             status.data_ptr(), _cuda_stream(probs))
        count, bad = (int(v) for v in status.cpu())  # the one host sync
        if bad:
            raise ValueError(f"{name}: contains NaN or inf")
        return chips[:count], batch_index[:count]
    chips, batch_index, bad_map = _ext().focus_chips_batched_cpu(probs, valid_hw, threshold, dilation, min_size)
    if bad_map >= 0:
        where = f" (map {bad_map})" if name == "probs" else ""
        raise ValueError(f"{name}: contains NaN or inf{where}")
    return _same_kind(chips, like), _same_kind(batch_index, like)


def focus_chips(prob, threshold: float, dilation: int, min_size: int):
    """FocusChips, Algorithm 1 of DESIGN.md, on one (H, W) float32 focus map.

    binary = prob >= threshold (compared in float32); dilate with a dilation x dilation square; one
    enclosing rectangle per 8-connected component; grow each about its centre to at least
    min_size x min_size cells (odd extra cell to the right/bottom), shifted inside the map (clipped only
    when the map is smaller); paint the rectangles and repeat until their number stops changing.
    Returns (M, 4) int32 [x1, y1, x2, y2) in map cells, sorted by (y1, x1). NaN/inf in prob: ValueError.
    On CUDA this is focus_chips_batched with a batch of one.
    """
    p = _array(prob, "prob", (np.float32,), ndim=2)
    _check_cells(p.shape, "prob")
    valid = np.array([p.shape], dtype=np.int32)
    chips, _ = _focus_chips(p[None], valid, threshold, dilation, min_size, "prob", prob)
    return chips


def focus_chips_batched(probs, valid_hw, threshold: float, dilation: int, min_size: int):
    """focus_chips over a batch: probs (B, H, W) float32, valid_hw (B, 2) ints, each map's valid region
    (rows/columns beyond it are padding, ignored: map b is probs[b, :h, :w]).

    Returns chips (M, 4) int32 in cells and batch_index (M,) int32, map by map in batch order, each map's
    chips as focus_chips gives them. On CUDA: one launch over the batch, one thread block per map (sized
    for focus maps, ~100 x 130 cells at most), plus one launch that gathers the chips in batch order;
    valid_hw is checked on the host and the chip count is the one value the host reads.
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
    return _focus_chips(p, valid.astype(np.int32), threshold, dilation, min_size, "probs", probs)


def _per_item(value, name: str, count: int, width: int | None) -> np.ndarray:
    """A scalar / (width,) parameter or its per-item form (count,) / (count, width), as host float64
    (a CUDA tensor given here is small and read on the host)."""
    arr = _host_array(value, name)
    if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
        raise TypeError(f"{name}: expected numbers, got dtype {arr.dtype}")
    single = () if width is None else (width,)
    per_item = (count,) if width is None else (count, width)
    if arr.shape not in (single, per_item):
        raise ValueError(f"{name}: expected shape {single or 'a scalar'} or {per_item}, got {arr.shape}")
    return arr.astype(np.float64)


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


def _crop_slot_and_norm(out_hw, mean, std) -> tuple:
    """Checked (out_h, out_w) and mean, std as lists of 3 floats (crop_resize, crop_resize_images)."""
    if not isinstance(out_hw, (tuple, list)) or len(out_hw) != 2:
        raise ValueError(f"out_hw: expected (height, width), got {out_hw!r}")
    out_h, out_w = (_int_at_least(v, "out_hw", 1) for v in out_hw)
    mean_, std_ = _host_array(mean, "mean"), _host_array(std, "std")
    for arr, name in ((mean_, "mean"), (std_, "std")):
        if arr.shape != (3,) or not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise ValueError(f"{name}: expected 3 finite numbers (output channel order), got {arr.tolist()}")
    if (std_ <= 0).any():
        raise ValueError(f"std: expected positive values, got {std_.tolist()}")
    return out_h, out_w, [float(v) for v in mean_], [float(v) for v in std_]


def _crop_sizes(ch, sc, out_h: int, out_w: int) -> tuple:
    """(oh, ow) int32 of each chip resized, in float32 as the kernels compute them, for float32 chips
    (M, 4) and scales (M,), NumPy or torch alike; ValueError naming the first chip that is not finite, has
    a scale <= 0, or resizes to nothing or to more than out_hw."""
    if _is_tensor(ch):
        import torch
        extent = lambda lo, hi: torch.floor((hi - lo) * sc + 0.5).to(torch.int32)  # noqa: E731
        finite = torch.isfinite(ch).all(1) & torch.isfinite(sc)
    else:
        extent = lambda lo, hi: np.floor((hi - lo) * sc + np.float32(0.5)).astype(np.int32)  # noqa: E731
        finite = np.isfinite(ch).all(1) & np.isfinite(sc)
    with np.errstate(invalid="ignore"):  # NaN/inf chips: refused just below
        oh, ow = extent(ch[:, 1], ch[:, 3]), extent(ch[:, 0], ch[:, 2])
    bad = ~finite | (sc <= 0) | (ch[:, 2] <= ch[:, 0]) | (ch[:, 3] <= ch[:, 1]) | (oh < 1) | (ow < 1) \
        | (oh > out_h) | (ow > out_w)
    if ch.shape[0] and bool(bad.any()):
        i = int(np.flatnonzero(bad.cpu().numpy() if _is_tensor(bad) else bad)[0])
        box, s = [float(v) for v in ch[i]], float(sc[i])
        if not (np.isfinite(box).all() and np.isfinite(s) and s > 0):
            raise ValueError(f"chips/scales: chip {i} {box} with scale {s}: expected finite boxes and positive scales")
        raise ValueError(f"chips: chip {i} {box} at scale {s} resizes to ({int(oh[i])}, {int(ow[i])}) pixels: "
                         f"expected x2 > x1, y2 > y1 and a size of 1..{(out_h, out_w)} (out_hw)")
    return oh, ow


def crop_resize(image, chips, scales, out_hw, mean, std, dtype="float32", bgr_to_rgb: bool = True):
    """Cuts chips out of an (H, W, 3) uint8 image into one normalised network batch.

    chips (M, 4) float [x1, y1, x2, y2) in image pixels; scales (M,) or a scalar: chip m is resized to
    oh = floor((y2 - y1) * s + 0.5), ow = floor((x2 - x1) * s + 0.5) (in float32), which must fit in
    out_hw = (Hb, Wb), and placed at the top-left of its slot, the rest 0. Sampling is the exact affine
    map src = x1 + (u + 0.5) / s - 0.5 (so a box b in the chip projects back as b / s + (x1, y1)),
    bilinear, clamped to the image (replicated edge). Values ((pixel / 255) - mean[c]) / std[c], channels
    BGR -> RGB when bgr_to_rgb (mean/std in output order). Returns (M, 3, Hb, Wb) float32 or float16 on
    the image's device. On CUDA the size check reads one flag on the host.
    """
    img = _array(image, "image", (np.uint8,), ndim=3, last_dim=3)
    out_dtype = str(dtype).replace("torch.", "")
    if out_dtype not in ("float32", "float16"):
        raise ValueError(f"dtype: expected 'float32' or 'float16', got {dtype!r}")
    out_h, out_w, mean_, std_ = _crop_slot_and_norm(out_hw, mean, std)
    on_cuda = _is_cuda(img)
    # Chips and scales given on the host (the cascade's) are checked there and sent in one copy: checking
    # them on the GPU would cost a host read of the result.
    check_on_device = on_cuda and (_is_tensor(chips) or _is_tensor(scales))
    if check_on_device:
        import torch
        on_image_device = lambda x: (x if _is_tensor(x) else torch.as_tensor(np.asarray(x))).to(  # noqa: E731
            img.device)
        ch = _array(on_image_device(chips), "chips", (np.float32, np.float64), ndim=2, last_dim=4).float()
        sc = on_image_device(scales)
    else:
        ch = _array(chips, "chips", (np.float32, np.float64), ndim=2, last_dim=4).astype(np.float32)
        sc = _host_array(scales, "scales")
    if not np.issubdtype(np.dtype(str(sc.dtype).replace("torch.", "")), np.number):
        raise TypeError(f"scales: expected numbers, got dtype {sc.dtype}")
    count = ch.shape[0]
    if sc.ndim == 0:
        sc = sc.expand(count) if check_on_device else np.full(count, sc)
    if tuple(sc.shape) != (count,):
        raise ValueError(f"scales: expected a scalar or shape ({count},) to match chips, got {tuple(sc.shape)}")
    if count and img.shape[0] * img.shape[1] == 0:
        raise ValueError(f"image: expected a non-empty image to crop chips from, got shape {tuple(img.shape)}")

    sc = sc.to(torch.float32).contiguous() if check_on_device else sc.astype(np.float32)
    oh, ow = _crop_sizes(ch, sc, out_h, out_w)  # in float32, the same arithmetic on either device
    sizes = (torch.stack([oh, ow], 1) if check_on_device else np.stack([oh, ow], 1)).reshape(-1, 2)
    if on_cuda:
        import torch
        if not check_on_device:  # one host-to-device copy (sizes < 2^24: exact in float32)
            packed = to_device(np.concatenate([ch, sc[:, None], sizes.astype(np.float32)], 1), img.device)
            ch, sc, sizes = packed[:, :4].contiguous(), packed[:, 4].contiguous(), packed[:, 5:].to(torch.int32)
        out = torch.empty((count, 3, out_h, out_w), dtype=getattr(torch, out_dtype), device=img.device)
        sizes = sizes.contiguous()
        _cuda_ext().crop_resize_cuda(img.data_ptr(), img.shape[0], img.shape[1], ch.data_ptr(), sc.data_ptr(),
                                     sizes.data_ptr(), count, out_h, out_w, mean_, std_, bool(bgr_to_rgb),
                                     out_dtype == "float16", out.data_ptr(), _cuda_stream(img))
        return out
    out = _ext().crop_resize_cpu(img, np.ascontiguousarray(ch), np.ascontiguousarray(sc),
                                 np.ascontiguousarray(sizes), out_h, out_w, mean_, std_, bool(bgr_to_rgb))
    if out_dtype == "float16":
        out = out.astype(np.float16)
    return _same_kind(out, image)


def crop_resize_images(images: list, index, chips, scales, out_hw, mean, std, bgr_to_rgb: bool = True):
    """crop_resize over several images at once: chip m is cut from images[index[m]] (each (H, W, 3) uint8,
    all NumPy / CPU tensors or all on one CUDA device). index (M,) ints, chips (M, 4) and scales (M,) are
    host arrays (checked there: no host read on CUDA). Returns (M, 3, Hb, Wb) float32 like crop_resize
    of each image's chips, in chip order. On CUDA: two host-to-device copies (the chips' parameters and
    their images' addresses) and one launch for the whole batch, where crop_resize takes one per image."""
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError("images: expected a non-empty list of (H, W, 3) uint8 images")
    imgs = [_array(im, f"images[{k}]", (np.uint8,), ndim=3, last_dim=3) for k, im in enumerate(images)]
    _same_device(**{f"images[{k}]": im for k, im in enumerate(imgs)})
    if any(_is_tensor(a) for a in (index, chips, scales)):
        raise TypeError("index, chips, scales: expected host arrays (NumPy or lists)")
    idx = _host_array(index, "index")
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"index: expected (M,) ints, got shape {idx.shape} dtype {idx.dtype}")
    ch = _array(np.asarray(chips), "chips", (np.float32, np.float64), ndim=2, last_dim=4).astype(np.float32)
    sc = _host_array(scales, "scales").astype(np.float32).reshape(-1)
    count = ch.shape[0]
    if idx.shape[0] != count or sc.shape[0] != count:
        raise ValueError(f"index, scales: expected one per chip ({count}), got {idx.shape[0]} and {sc.shape[0]}")
    if count and ((idx < 0) | (idx >= len(imgs))).any():
        raise ValueError(f"index: expected image indices in [0, {len(imgs)}), got {idx.min()}..{idx.max()}")
    if not _is_cuda(imgs[0]):  # crop_resize per image (it checks the chips, sizes and normalisation)
        groups = np.unique(idx)
        if len(groups) <= 1:  # (one image, or none: its crop_resize as it is, no copy into a batch)
            k = int(groups[0]) if len(groups) else 0
            return _same_kind(crop_resize(imgs[k], ch, sc, out_hw, mean, std, bgr_to_rgb=bgr_to_rgb), images[0])
        rows = [np.flatnonzero(idx == k) for k in groups]
        parts = [crop_resize(imgs[k], ch[r], sc[r], out_hw, mean, std, bgr_to_rgb=bgr_to_rgb)
                 for k, r in zip(groups, rows)]
        out = np.empty((count, *parts[0].shape[1:]), np.float32)
        for r, part in zip(rows, parts):
            out[r] = part
        return _same_kind(out, images[0])
    hw = np.array([im.shape[:2] for im in imgs], np.int64).reshape(-1, 2)[idx.astype(np.int64)]
    if count and (hw.min(initial=1) == 0):
        raise ValueError("images: expected non-empty images to crop chips from")
    out_h, out_w, mean_, std_ = _crop_slot_and_norm(out_hw, mean, std)
    oh, ow = _crop_sizes(ch, sc, out_h, out_w)
    import torch
    device = imgs[0].device
    # float32 holds the sizes exactly (< 2^24)
    params = to_device(np.concatenate([ch, sc[:, None], oh[:, None], ow[:, None], hw], 1).astype(np.float32), device)
    addresses = to_device(np.array([imgs[k].data_ptr() for k in idx], np.int64), device)
    out = torch.empty((count, 3, out_h, out_w), dtype=torch.float32, device=device)
    if count:
        _cuda_ext().crop_resize_images_cuda(addresses.data_ptr(), params.data_ptr(), count, out_h, out_w, mean_,
                                            std_, bool(bgr_to_rgb), out.data_ptr(), _cuda_stream(imgs[0]))
    return out

# ---------------------------------------------------------------------------------------------
# Box ops: decode, nms, soft_nms, stack_prune, top_k (csrc/ops/{decode,nms,soft_nms,stack_prune,top_k}).

_SOFT_NMS_METHODS = {"linear": 0, "gaussian": 1, "hard": 2}  # csrc/ops/soft_nms.h SoftNmsMethod


def _number(value, name: str, minimum: float | None = None, exclusive: bool = False,
            allow_inf: bool = False) -> float:
    """A real Python/NumPy scalar, finite (unless allow_inf), >= minimum (> when exclusive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if np.isnan(value) or (np.isinf(value) and not allow_inf):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise ValueError(f"{name}: expected a number {'>' if exclusive else '>='} {minimum}, got {value}")
    return value


def _count(value, name: str) -> int:
    """A non-negative integer (counts and limits)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value}")
    return int(value)


def _same_device(**named):
    """All array arguments on the CPU (NumPy or CPU tensors) or all on one CUDA device."""
    devices = {name: (str(x.device) if _is_cuda(x) else "cpu") for name, x in named.items() if x is not None}
    if len(set(devices.values())) > 1:
        raise ValueError("arguments on different devices: "
                         + ", ".join(f"{name} on {dev}" for name, dev in devices.items()))


def _check_boxes(boxes, name: str = "boxes"):
    """Finite, and x2 >= x1, y2 >= y1 (zero-area boxes are allowed)."""
    _check_finite(boxes, name)
    if boxes.shape[0] == 0 or not _value_checks(boxes):
        return
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    _fail_if(bad.any(), f"{name}: expected x2 >= x1 and y2 >= y1 in every row [x1, y1, x2, y2]")


def _boxes_scores(boxes, scores, labels=None):
    """Checked (boxes (N,4) float32, scores (N,) float32, labels (N,) int64 or None)."""
    _same_device(boxes=boxes, scores=scores, labels=labels)
    boxes = _array(boxes, "boxes", (np.float32,), ndim=2, last_dim=4)
    scores = _array(scores, "scores", (np.float32,), ndim=1)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores: expected length {boxes.shape[0]} (one per box), got {scores.shape[0]}")
    _check_boxes(boxes)
    _check_finite(scores, "scores")
    if labels is not None:
        labels = _array(labels, "labels", (np.int32, np.int64), ndim=1)
        if labels.shape[0] != boxes.shape[0]:
            raise ValueError(f"labels: expected length {boxes.shape[0]} (one per box), got {labels.shape[0]}")
        labels = labels.long() if _is_tensor(labels) else labels.astype(np.int64, copy=False)
    return boxes, scores, labels


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def decode(scores, ltrb, stride=8, score_threshold=0.05, max_candidates=1000, scales=None, offsets=None,
           padded=False):
    """Dense network outputs -> candidate detections in original-image pixels (docs/contract.md).
    On CUDA inside trusted_values() the kernels themselves flag NaN/inf scores (any cell) and decoded
    boxes (the cells kept), read with the row count.

    scores (N, C, h, w) float32, ltrb (N, 4, h, w) float32 (left, top, right, bottom distances in input
    pixels from the cell centre ((x + .5) * stride, (y + .5) * stride)), scales (N,) float32 (default 1),
    offsets (N, 2) float32 as (x0, y0) (default 0): box = [cx - l, cy - t, cx + r, cy + b] / scale + offset.
    Per image the cells with score > score_threshold, at most max_candidates of them, highest first (ties:
    smaller flat index (c, y, x) first); images in order.
    Returns boxes (K, 4) float32, scores (K,) float32, labels (K,) int32 (= c), batch_index (K,) int32.

    padded=True: no host read of K (on CUDA that read waits for the network's batch, so the host cannot
    queue the next one). Every output has cap = N * min(max_candidates, C * h * w) rows, the same K rows
    first and zeros after them, and a fifth output valid (cap,) bool marks the K real rows. The NaN/inf
    flags then go through the value checks (raised at deferred_checks()' end inside it, at once outside).
    """
    _same_device(scores=scores, ltrb=ltrb, scales=scales, offsets=offsets)
    scores_in = scores
    scores = _array(scores, "scores", (np.float32,), ndim=4)
    ltrb = _array(ltrb, "ltrb", (np.float32,), ndim=4)
    n, c, h, w = scores.shape
    if tuple(ltrb.shape) != (n, 4, h, w):
        raise ValueError(f"ltrb: expected shape {(n, 4, h, w)} to match scores {tuple(scores.shape)}, "
                         f"got {tuple(ltrb.shape)}")
    stride = _number(stride, "stride", 0.0, exclusive=True)
    score_threshold = _number(score_threshold, "score_threshold")
    max_candidates = _count(max_candidates, "max_candidates")
    cuda = _is_cuda(scores)
    if scales is None:
        scales = _ones_like_kind(scores, (n,))
    scales = _array(scales, "scales", (np.float32,), ndim=1)
    if scales.shape[0] != n:
        raise ValueError(f"scales: expected shape ({n},) (one per image), got {tuple(scales.shape)}")
    if offsets is None:
        offsets = _ones_like_kind(scores, (n, 2)) * 0
    offsets = _array(offsets, "offsets", (np.float32,), ndim=2, last_dim=2)
    if offsets.shape[0] != n:
        raise ValueError(f"offsets: expected shape ({n}, 2) (one (x0, y0) per image), got {tuple(offsets.shape)}")
    _check_finite(scores, "scores")
    _check_finite(ltrb, "ltrb")
    _check_finite(scales, "scales")
    _check_finite(offsets, "offsets")
    if _value_checks(scales):
        _fail_if((scales <= 0).any(), "scales: expected every scale > 0")
    cap = n * min(max_candidates, c * h * w)
    if not cuda:
        out = _ext().decode_cpu(scores, ltrb, stride, score_threshold, max_candidates, scales, offsets)
        if padded:
            k = out[0].shape[0]
            out = tuple(np.concatenate([o, np.zeros((cap - k,) + o.shape[1:], o.dtype)]) for o in out)
            out += (np.arange(cap) < k,)
        return tuple(_same_kind(o, scores_in) for o in out)
    import torch
    dev = scores.device
    # One zeroed buffer for the four outputs and the counts (one memset, not five): padded rows are zeros.
    buf = (torch.zeros if padded else torch.empty)((3 * 8 + cap * 28,), dtype=torch.uint8, device=dev)
    count = buf[:24].view(torch.int64)  # rows, non-finite score seen, non-finite box
    if not padded:
        count.zero_()

    def column(first: int, width: int, dtype):  # `width` 4-byte values a row, from byte 24 + first * cap
        return buf[24 + first * cap:24 + (first + 4 * width) * cap].view(dtype).view(cap, width)

    boxes_out = column(0, 4, torch.float32)
    scores_out, labels_out, batch_out = (column(f, 1, t)[:, 0] for f, t in
                                         ((16, torch.float32), (20, torch.int32), (24, torch.int32)))
    if cap > 0:
        _ext().decode_cuda(scores.data_ptr(), ltrb.data_ptr(), n, c, h, w, stride, score_threshold,
                           max_candidates, scales.data_ptr(), offsets.data_ptr(), boxes_out.data_ptr(),
                           scores_out.data_ptr(), labels_out.data_ptr(), batch_out.data_ptr(), count.data_ptr(),
                           _cuda_stream(scores))
    if padded:
        _fail_if(count[1] > 0, "scores: contains NaN or inf")
        _fail_if(count[2] > 0, "ltrb: contains NaN or inf (a decoded box is not finite)")
        valid = torch.arange(cap, device=dev) < count[0]
        return boxes_out, scores_out, labels_out, batch_out, valid
    # The one host read: the row count, with the kernels' own finiteness flags (what trusted_values()
    # relies on: they cost no launch of their own).
    k, bad_scores, bad_boxes = count.tolist()
    if bad_scores:
        raise ValueError("scores: contains NaN or inf")
    if bad_boxes:
        raise ValueError("ltrb: contains NaN or inf (a decoded box is not finite)")
    return boxes_out[:k], scores_out[:k], labels_out[:k], batch_out[:k]


def _ones_like_kind(like, shape):
    """float32 ones of the kind of `like` (NumPy array, or a tensor on its device)."""
    if _is_tensor(like):
        import torch
        return torch.ones(shape, dtype=torch.float32, device=like.device)
    return np.ones(shape, np.float32)


def nms(boxes, scores, iou_threshold, labels=None):
    """Greedy non-maximum suppression.

    boxes (N, 4) float32 [x1, y1, x2, y2], scores (N,) float32, labels (N,) int32/int64 or None.
    Boxes are taken by descending score (ties: lower index); a box is dropped when its IoU with a kept box
    is > iou_threshold (with labels: only boxes of the same label suppress each other).
    Returns keep (K,) int64 indices, by descending score.
    """
    like = boxes
    boxes, scores, labels = _boxes_scores(boxes, scores, labels)
    iou_threshold = _number(iou_threshold, "iou_threshold", 0.0)
    n = boxes.shape[0]
    if not _is_cuda(boxes):
        return _same_kind(_ext().nms_cpu(boxes, scores, iou_threshold, labels), like)
    import torch
    keep = torch.empty((n,), dtype=torch.int64, device=boxes.device)
    count = torch.zeros((1,), dtype=torch.int64, device=boxes.device)
    if n > 0:
        _ext().nms_cuda(boxes.data_ptr(), scores.data_ptr(), _ptr(labels), n, iou_threshold, keep.data_ptr(),
                        count.data_ptr(), _cuda_stream(boxes))
    return keep[: int(count.item())]


def _soft_nms_options(method, sigma, iou_threshold, score_threshold, max_output) -> tuple:
    """Checked (method code, sigma, iou_threshold, score_threshold, max_output with -1 for no limit)."""
    if method not in _SOFT_NMS_METHODS:
        raise ValueError(f"method: expected one of {sorted(_SOFT_NMS_METHODS)}, got {method!r}")
    return (_SOFT_NMS_METHODS[method], _number(sigma, "sigma", 0.0, exclusive=True),
            _number(iou_threshold, "iou_threshold", 0.0), _number(score_threshold, "score_threshold"),
            -1 if max_output is None else _count(max_output, "max_output"))


def soft_nms(boxes, scores, labels=None, method="gaussian", sigma=0.55, iou_threshold=0.3,
             score_threshold=0.001, max_output=None):
    """Soft-NMS (Bodla et al. 2017) as in DESIGN.md: repeatedly take the remaining box with the highest
    current score (ties: lower index), output it, and multiply the score of every other remaining box (of
    the same label, unless labels is None) by gaussian exp(-iou^2 / sigma), linear (1 - iou if iou >
    iou_threshold else 1) or hard (0 if iou > iou_threshold else 1); boxes whose score is (or falls)
    below score_threshold are dropped. max_output stops after that many outputs (the same first outputs).

    Returns keep (K,) int64 indices in the order taken, and their decayed scores (K,) float32.
    """
    like = boxes
    boxes, scores, labels = _boxes_scores(boxes, scores, labels)
    code, sigma, iou_threshold, score_threshold, max_output = _soft_nms_options(method, sigma, iou_threshold,
                                                                                score_threshold, max_output)
    n = boxes.shape[0]
    if not _is_cuda(boxes):
        keep, out = _ext().soft_nms_cpu(boxes, scores, labels, code, sigma, iou_threshold, score_threshold,
                                        max_output)
        return _same_kind(keep, like), _same_kind(out, like)
    import torch
    keep = torch.empty((n,), dtype=torch.int64, device=boxes.device)
    out = torch.empty((n,), dtype=torch.float32, device=boxes.device)
    count = torch.zeros((1,), dtype=torch.int64, device=boxes.device)
    if n > 0 and max_output != 0:
        _ext().soft_nms_cuda(boxes.data_ptr(), scores.data_ptr(), _ptr(labels), n, code, sigma, iou_threshold,
                             score_threshold, max_output, keep.data_ptr(), out.data_ptr(), count.data_ptr(),
                             _cuda_stream(boxes))
    k = int(count.item())
    return keep[:k], out[:k]


def soft_nms_segments(boxes, scores, offsets, labels=None, method="gaussian", sigma=0.55, iou_threshold=0.3,
                      score_threshold=0.001, max_output=None):
    """soft_nms on each segment of the boxes at once: segment s is boxes[offsets[s]:offsets[s + 1]]
    (offsets (S + 1,) int64, non-decreasing, from 0 to at most N: boxes beyond offsets[S] are in no
    segment), run as its own soft_nms with max_output. Typically one segment per image (or per image and
    label: class-aware Soft-NMS never mixes labels).

    Returns keep (N,) int64, scores (N,) float32 and counts (S,) int64 in a fixed layout: segment s's
    outputs are keep[offsets[s]:offsets[s] + counts[s]] (indices into all N boxes, in the order taken)
    with their decayed scores; every other slot holds -1 and 0. On CUDA: one launch (a thread block per
    segment) and no host read (the offsets are checked on the device, deferrable: deferred_checks()).
    """
    like = boxes
    boxes, scores, labels = _boxes_scores(boxes, scores, labels)
    _same_device(boxes=boxes, offsets=offsets)
    offsets = _array(offsets, "offsets", (np.int64,), ndim=1)
    if offsets.shape[0] < 1:
        raise ValueError("offsets: expected shape (segments + 1,) starting at 0, got an empty array")
    code, sigma, iou_threshold, score_threshold, max_output = _soft_nms_options(method, sigma, iou_threshold,
                                                                                score_threshold, max_output)
    n, segments = boxes.shape[0], offsets.shape[0] - 1
    steps = offsets[1:] - offsets[:-1]
    # A bad offset would send a block out of bounds: refused on the device first (see below).
    bad = (offsets[0] != 0) | (offsets[-1] > n)
    if segments:
        bad = bad | (steps < 0).any()
    if not _is_cuda(boxes):
        if bool(bad):
            raise ValueError(f"offsets: expected non-decreasing offsets from 0 to at most {n}, got {offsets.tolist()}")
        keep, out, counts = _ext().soft_nms_segments_cpu(boxes, scores, labels, offsets, code, sigma, iou_threshold,
                                                         score_threshold, max_output)
        keep[offsets[-1]:], out[offsets[-1]:] = -1, 0
        return _same_kind(keep, like), _same_kind(out, like), _same_kind(counts, like)
    import torch
    keep = torch.full((n,), -1, dtype=torch.int64, device=boxes.device)
    out = torch.zeros((n,), dtype=torch.float32, device=boxes.device)
    counts = torch.zeros((segments,), dtype=torch.int64, device=boxes.device)
    _fail_if(bad, f"offsets: expected non-decreasing offsets from 0 to at most {n}")
    if segments and max_output != 0:
        # Bad offsets become one empty segment list on the device, so the kernel stays in bounds even
        # when the check is deferred.
        safe = torch.where(bad, torch.zeros_like(offsets), offsets).contiguous()
        _ext().soft_nms_segments_cuda(boxes.data_ptr(), scores.data_ptr(), _ptr(labels), safe.data_ptr(), segments,
                                      n, code, sigma, iou_threshold, score_threshold, max_output, keep.data_ptr(),
                                      out.data_ptr(), counts.data_ptr(), _cuda_stream(boxes))
    return keep, out, counts


def stack_prune(boxes, chip, image_size, valid_range=None):
    """Which detections survive focus stacking (DESIGN.md "Focus stacking rules").

    boxes (N, 4) float32 in original-image pixels; chip (4,) float32 (one chip for all boxes) or (N, 4)
    (the chip of each box), in original-image pixels; image_size = (height, width); valid_range = (lo, hi)
    or an (N, 2) float32 array of each box's image size [height, width] (a batch of images); valid_range = (lo, hi)
    or None (hi may be inf). A box is clipped to its chip and kept when the clipped box has positive area,
    each clipped side is strictly inside the chip or lies on a chip side that is also the image border
    (chip x1 <= 0, y1 <= 0, x2 >= width, y2 >= height), and lo <= sqrt(area of the unclipped box) <= hi.
    Returns a bool mask (N,).
    """
    like = boxes
    if isinstance(chip, (list, tuple)):
        chip = np.asarray(chip, np.float32)
        if _is_tensor(boxes):
            import torch
            chip = torch.from_numpy(chip).to(boxes.device)
    _same_device(boxes=boxes, chip=chip)
    boxes = _array(boxes, "boxes", (np.float32,), ndim=2, last_dim=4)
    chip = _array(chip, "chip", (np.float32,), last_dim=4)
    n = boxes.shape[0]
    if chip.ndim == 2:
        if chip.shape[0] != n:
            raise ValueError(f"chip: expected shape (4,) or ({n}, 4) (one chip per box), got {tuple(chip.shape)}")
    elif chip.ndim != 1:
        raise ValueError(f"chip: expected shape (4,) or ({n}, 4), got {tuple(chip.shape)}")
    _check_boxes(boxes)
    _check_boxes(chip.reshape(-1, 4), "chip")
    image_hw = None
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        height = _number(image_size[0], "image_size[0] (height)", 0.0, exclusive=True)
        width = _number(image_size[1], "image_size[1] (width)", 0.0, exclusive=True)
    elif _is_tensor(image_size) or isinstance(image_size, np.ndarray):
        _same_device(boxes=boxes, image_size=image_size)
        image_hw = _array(image_size, "image_size", (np.float32,), ndim=2, last_dim=2)
        if image_hw.shape[0] != n:
            raise ValueError(f"image_size: expected (height, width) or shape ({n}, 2) (one per box), got "
                             f"{tuple(image_hw.shape)}")
        if _value_checks(image_hw):
            _fail_if(~(image_hw > 0).all() | ~image_hw.isfinite().all() if _is_tensor(image_hw)
                     else ~((image_hw > 0).all() & np.isfinite(image_hw).all()),
                     "image_size: expected positive finite sizes (height, width)")
        height = width = 0.0
    else:
        raise ValueError(f"image_size: expected (height, width) or an (N, 2) array, got {image_size!r}")
    lo, hi = 0.0, float("inf")
    if valid_range is not None:
        if not isinstance(valid_range, (tuple, list)) or len(valid_range) != 2:
            raise ValueError(f"valid_range: expected (lo, hi) or None, got {valid_range!r}")
        lo = _number(valid_range[0], "valid_range[0] (lo)", 0.0)
        hi = _number(valid_range[1], "valid_range[1] (hi)", 0.0, allow_inf=True)
        if hi < lo:
            raise ValueError(f"valid_range: expected lo <= hi, got {tuple(valid_range)}")
    per_box = chip.ndim == 2
    if not _is_cuda(boxes):
        return _same_kind(_ext().stack_prune_cpu(boxes, chip, image_hw, height, width, lo, hi), like)
    import torch
    keep = torch.empty((n,), dtype=torch.bool, device=boxes.device)
    if n > 0:
        _ext().stack_prune_cuda(boxes.data_ptr(), chip.data_ptr(), n, per_box, _ptr(image_hw), height, width, lo, hi,
                                keep.data_ptr(), _cuda_stream(boxes))
    return keep


def top_k(scores, k):
    """Indices (min(k, N),) int64 of the k highest scores, by descending score (ties: lower index)."""
    like = scores
    scores = _array(scores, "scores", (np.float32,), ndim=1)
    k = _count(k, "k")
    _check_finite(scores, "scores")
    n = scores.shape[0]
    if not _is_cuda(scores):
        return _same_kind(_ext().top_k_cpu(scores, k), like)
    import torch
    out = torch.empty((min(k, n),), dtype=torch.int64, device=scores.device)
    if out.numel() > 0:
        _ext().top_k_cuda(scores.data_ptr(), n, k, out.data_ptr(), _cuda_stream(scores))
    return out
