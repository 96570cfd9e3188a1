"""Box ops: decode, nms, soft_nms, stack_prune, top_k (csrc/ops/{decode,nms,soft_nms,stack_prune,top_k})."""
from __future__ import annotations

import numpy as np

from ._checks import (_array, _check_boxes, _check_finite, _count, _cuda_stream, _ext, _fail_if, _is_cuda,
                      _is_tensor, _number, _ptr, _same_device, _same_kind, _value_checks)


_SOFT_NMS_METHODS = {"linear": 0, "gaussian": 1, "hard": 2}  # csrc/ops/soft_nms.h SoftNmsMethod


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
    """Soft-NMS (Bodla et al. 2017) as in docs/design.md: repeatedly take the remaining box with the highest
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
    """Which detections survive focus stacking (docs/design.md "Focus stacking rules").

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
