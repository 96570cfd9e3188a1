"""Post-processing ops of the AutoFocus cascade, one Python entry for the C++ (CPU) and CUDA kernels.

NumPy arrays in, NumPy arrays out; torch tensors in, torch tensors out on the same device. NumPy arrays
and CPU tensors run the C++ kernels (tensors zero-copy through NumPy); CUDA tensors run the CUDA kernels
on the current torch stream and stay on the GPU. This module owns the argument checks a user sees:
bad input raises ValueError/TypeError naming the argument, before any kernel runs.
"""
from __future__ import annotations

import sys

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


def _cuda_stream(t) -> int:
    import torch
    return torch.cuda.current_stream(t.device).cuda_stream


def _check_finite(x, name: str):
    """NaN/inf scores or boxes make every downstream answer garbage: refuse them up front."""
    finite = bool(x.isfinite().all()) if _is_tensor(x) else bool(np.isfinite(x).all())
    if not finite:
        raise ValueError(f"{name}: contains NaN or inf")


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
    if boxes.shape[0] == 0:
        return
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bool(bad.any()):
        raise ValueError(f"{name}: expected x2 >= x1 and y2 >= y1 in every row [x1, y1, x2, y2]")


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


def decode(scores, ltrb, stride=8, score_threshold=0.05, max_candidates=1000, scales=None, offsets=None):
    """Dense network outputs -> candidate detections in original-image pixels (docs/contract.md).

    scores (N, C, h, w) float32, ltrb (N, 4, h, w) float32 (left, top, right, bottom distances in input
    pixels from the cell centre ((x + .5) * stride, (y + .5) * stride)), scales (N,) float32 (default 1),
    offsets (N, 2) float32 as (x0, y0) (default 0): box = [cx - l, cy - t, cx + r, cy + b] / scale + offset.
    Per image the cells with score > score_threshold, at most max_candidates of them, highest first (ties:
    smaller flat index (c, y, x) first); images in order.
    Returns boxes (K, 4) float32, scores (K,) float32, labels (K,) int32 (= c), batch_index (K,) int32.
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
    if bool((scales <= 0).any()):
        raise ValueError("scales: expected every scale > 0")
    if not cuda:
        out = _ext().decode_cpu(scores, ltrb, stride, score_threshold, max_candidates, scales, offsets)
        return tuple(_same_kind(o, scores_in) for o in out)
    import torch
    cells = c * h * w
    cap = n * min(max_candidates, cells)
    dev = scores.device
    boxes_out = torch.empty((cap, 4), dtype=torch.float32, device=dev)
    scores_out = torch.empty((cap,), dtype=torch.float32, device=dev)
    labels_out = torch.empty((cap,), dtype=torch.int32, device=dev)
    batch_out = torch.empty((cap,), dtype=torch.int32, device=dev)
    count = torch.zeros((1,), dtype=torch.int64, device=dev)
    if cap > 0:
        _ext().decode_cuda(scores.data_ptr(), ltrb.data_ptr(), n, c, h, w, stride, score_threshold,
                           max_candidates, scales.data_ptr(), offsets.data_ptr(), boxes_out.data_ptr(),
                           scores_out.data_ptr(), labels_out.data_ptr(), batch_out.data_ptr(), count.data_ptr(),
                           _cuda_stream(scores))
    k = int(count.item())
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
    if method not in _SOFT_NMS_METHODS:
        raise ValueError(f"method: expected one of {sorted(_SOFT_NMS_METHODS)}, got {method!r}")
    sigma = _number(sigma, "sigma", 0.0, exclusive=True)
    iou_threshold = _number(iou_threshold, "iou_threshold", 0.0)
    score_threshold = _number(score_threshold, "score_threshold")
    max_output = -1 if max_output is None else _count(max_output, "max_output")
    code = _SOFT_NMS_METHODS[method]
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


def stack_prune(boxes, chip, image_size, valid_range=None):
    """Which detections survive focus stacking (DESIGN.md "Focus stacking rules").

    boxes (N, 4) float32 in original-image pixels; chip (4,) float32 (one chip for all boxes) or (N, 4)
    (the chip of each box), in original-image pixels; image_size = (height, width); valid_range = (lo, hi)
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
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise ValueError(f"image_size: expected (height, width), got {image_size!r}")
    height = _number(image_size[0], "image_size[0] (height)", 0.0, exclusive=True)
    width = _number(image_size[1], "image_size[1] (width)", 0.0, exclusive=True)
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
        return _same_kind(_ext().stack_prune_cpu(boxes, chip, height, width, lo, hi), like)
    import torch
    keep = torch.empty((n,), dtype=torch.bool, device=boxes.device)
    if n > 0:
        _ext().stack_prune_cuda(boxes.data_ptr(), chip.data_ptr(), n, per_box, height, width, lo, hi,
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
