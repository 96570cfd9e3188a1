"""Shared test fixtures: the device list (CUDA cases skip with a reason where there is no GPU)."""
import pytest

try:
    import torch
    _HAS_GPU = torch.cuda.is_available()
except ImportError:  # torch is a dependency; this only keeps collection alive without it
    _HAS_GPU = False

from runtime import ops


def _cuda_skip_reason():
    if not _HAS_GPU:
        return "no CUDA GPU on this machine"
    if not ops.with_cuda():
        return "runtime._C was built without CUDA (nvcc not found, or AUTOFOCUS_CUDA=0)"
    return None


needs_cuda = pytest.mark.skipif(_cuda_skip_reason() is not None, reason=_cuda_skip_reason() or "")

# Parametrise ops tests over devices: ("numpy", "cpu", "cuda"); cuda skips with its reason elsewhere.
DEVICES = ("numpy", "cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda]))
