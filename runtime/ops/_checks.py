"""Argument checks shared by every op, the extension handle, and the deferred/trusted check contexts.

This module owns the argument checks a user sees: bad input raises ValueError/TypeError naming the
argument, before any kernel runs (inside deferred_checks(), the value checks of CUDA tensors raise at the
block's end instead; inside trusted_values() they are skipped).
"""
from __future__ import annotations

import contextvars
import sys
from contextlib import contextmanager

import numpy as np

try:
    from .. import _C
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


def _host_array(x, name: str) -> np.ndarray:
    """A small parameter (list, tuple, NumPy array or tensor, any device) as a NumPy float64/int array."""
    if _is_tensor(x):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected numbers, got {type(x).__name__}") from None


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


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()
