"""Shared test fixtures: the device list (CUDA cases skip with a reason where there is no GPU)."""
import numpy as np
import pytest

import torch

_HAS_GPU = torch.cuda.is_available()

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


def on_device(x, device):
    """A NumPy test input as the kind the device parameter names (None passes through)."""
    if x is None or device == "numpy":
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.cuda() if device == "cuda" else t


def from_device(y, device):
    """An op's output as NumPy, checking it came back as the kind that went in."""
    if device == "numpy":
        assert isinstance(y, np.ndarray)
        return y
    assert isinstance(y, torch.Tensor) and y.device.type == device
    return y.cpu().numpy()


# The random test bundle (tests/engine_fixtures.py), built once per session, and an engine on it.
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from engine_fixtures import shared_bundle
    return shared_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(bundle):
    from runtime.engine import AutoFocusEngine
    return AutoFocusEngine(bundle, backend="onnxruntime")
