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
