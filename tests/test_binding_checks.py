"""The extension's own checks at its boundary (csrc/bindings.cpp), called directly as runtime/ops.py
would never call them: a wrong shape or size is a ValueError naming the argument, never a read past a
buffer. CPU bindings here; the CUDA bindings' size checks run before any CUDA call, so they are tested
wherever the extension was built with CUDA, GPU or not; the device guard needs a GPU (two to move
work off the current device)."""
import numpy as np
import pytest
import torch

from conftest import needs_cuda
from runtime import _C

f32 = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
i64 = lambda *shape: np.zeros(shape, np.int64)    # noqa: E731


def test_nms_and_soft_nms_refuse_mismatched_rows():
    with pytest.raises(ValueError, match="boxes"):
        _C.nms_cpu(f32(3, 4), f32(5), 0.5, None)      # 5 scores, 3 boxes: the kernel would read 2 boxes past
    with pytest.raises(ValueError, match="labels"):
        _C.nms_cpu(f32(5, 4), f32(5), 0.5, i64(4))
    with pytest.raises(ValueError, match="boxes"):
        _C.soft_nms_cpu(f32(5, 3), f32(5), None, 2, 0.5, 0.3, 0.001, 10)
    # The inputs that are right still run (and an empty call is valid).
    assert _C.nms_cpu(f32(0, 4), f32(0), 0.5, None).shape == (0,)


def test_soft_nms_segments_refuses_offsets_outside_the_boxes():
    boxes = np.float32([[20 * i, 0, 20 * i + 10, 10] for i in range(4)])  # disjoint: every box is kept
    scores = np.ones(4, np.float32)
    for offsets in ([0, 2, 6], [0, 3, 1], [1, 2, 4]):  # past the end, decreasing, not from 0
        with pytest.raises(ValueError, match="offsets"):
            _C.soft_nms_segments_cpu(boxes, scores, None, np.int64(offsets), 2, 0.5, 0.3, 0.001, 10)
    keep, out, counts = _C.soft_nms_segments_cpu(boxes, scores, None, np.int64([0, 2, 4]), 2, 0.5, 0.3, 0.001, 10)
    assert list(counts) == [2, 2]


def test_decode_stack_prune_paint_boxes_top_k_refuse_wrong_sizes():
    with pytest.raises(ValueError, match="ltrb"):
        _C.decode_cpu(f32(2, 3, 4, 4), f32(2, 4, 4, 3), 8.0, 0.05, 10, f32(2), f32(2, 2))
    with pytest.raises(ValueError, match="scales"):
        _C.decode_cpu(f32(2, 3, 4, 4), f32(2, 4, 4, 4), 8.0, 0.05, 10, f32(1), f32(2, 2))
    with pytest.raises(ValueError, match="chips"):
        _C.stack_prune_cpu(f32(3, 4), f32(2, 4), None, 100.0, 100.0, 0.0, 1e9)
    with pytest.raises(ValueError, match="image_hw"):
        _C.stack_prune_cpu(f32(3, 4), f32(3, 4), f32(1, 2), 100.0, 100.0, 0.0, 1e9)
    with pytest.raises(ValueError, match="index"):
        _C.paint_boxes_cpu(f32(1, 4, 4), f32(3, 4), i64(2), None, 16.0)
    with pytest.raises(ValueError, match="k: expected >= 0"):
        _C.top_k_cpu(f32(5), -1)


cuda_built = pytest.mark.skipif(not _C.with_cuda(), reason="runtime._C was built without CUDA (AUTOFOCUS_CUDA=0)")


@cuda_built
def test_cuda_bindings_check_sizes_before_any_cuda_call():
    """No GPU is needed: these are refused before a pointer is looked at."""
    with pytest.raises(ValueError, match="MiB suppression mask"):
        _C.nms_cuda(0, 0, 0, 200_000, 0.5, 0, 0, 0)     # a 4.8 GB mask
    with pytest.raises(ValueError, match="box count"):
        _C.nms_cuda(0, 0, 0, -1, 0.5, 0, 0, 0)
    with pytest.raises(ValueError, match="k: expected >= 0"):
        _C.top_k_cuda(0, 10, -1, 0, 0)
    with pytest.raises(ValueError, match="height"):
        _C.dilate_cuda(0, -1, 8, 3, 0, 0)
    with pytest.raises(ValueError, match="segments"):
        _C.soft_nms_segments_cuda(0, 0, 0, 0, -1, 4, 2, 0.5, 0.3, 0.001, 10, 0, 0, 0, 0)


@cuda_built
def test_cuda_bindings_refuse_host_memory():
    """A host address handed to a CUDA binding is an exception (ValueError on a GPU machine; without a
    GPU the device query itself fails, a RuntimeError), never a launch on host memory."""
    scores = np.ones(8, np.float32)
    out = np.zeros(4, np.int64)
    expected = ValueError if torch.cuda.is_available() else RuntimeError
    with pytest.raises(expected, match="host address|CUDA error"):
        _C.top_k_cuda(scores.ctypes.data, 8, 4, out.ctypes.data, 0)


@needs_cuda
@pytest.mark.cuda
def test_device_guard_restores_the_current_device():
    from runtime import ops
    before = _C.cuda_current_device()
    scores = torch.rand(1000, device="cuda")
    got = ops.top_k(scores, 10)
    assert torch.equal(got.cpu(), torch.topk(scores.cpu(), 10).indices)
    assert _C.cuda_current_device() == before
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU: the guard's device switch needs a second device to show")
    with torch.cuda.device(0):
        other = torch.rand(1000, device="cuda:1")
        got = ops.top_k(other, 10)
        torch.cuda.synchronize(1)
        assert torch.equal(got.cpu(), torch.topk(other.cpu(), 10).indices)
        assert _C.cuda_current_device() == 0
