"""An engine call leaves the process as the user set it: the warnings filters and torch's CUDA sync
debug mode (process-wide settings the engine once changed on every CUDA call), and on CUDA the
caller's stream: a call made inside torch.cuda.stream(s) returns what it returns on the default stream."""
import warnings

import numpy as np
import pytest
import torch

from conftest import needs_cuda
from engine_fixtures import val_images
from runtime.engine import AutoFocusEngine

DEVICES = ["cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda])]


@pytest.fixture(scope="module")
def image():
    return val_images(1)[0][0]


@pytest.mark.parametrize("device", DEVICES)
def test_engine_call_leaves_warnings_filters_alone(bundle, image, device):
    eng = AutoFocusEngine(bundle, backend="auto", device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # a user's own filter
        before = list(warnings.filters)
        eng(image)
        eng.detect_batch([image, image], mode="sniper")
        assert warnings.filters == before


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_engine_call_leaves_the_sync_debug_mode_alone(bundle, image, backend):
    eng = AutoFocusEngine(bundle, backend=backend, device="cuda")
    previous = torch.cuda.get_sync_debug_mode()
    try:
        for mode in ("default", "warn"):
            torch.cuda.set_sync_debug_mode(mode)
            expected = torch.cuda.get_sync_debug_mode()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "warn": the user asked for the engine's syncs to be reported
                eng(image)
            assert torch.cuda.get_sync_debug_mode() == expected
            assert eng.last_stats["host_syncs"] is None  # not counted unless asked
        eng.count_host_syncs = True  # asked: counted, and the user's mode is back afterwards
        torch.cuda.set_sync_debug_mode("default")
        eng(image)
        assert eng.last_stats["host_syncs"] > 0 and torch.cuda.get_sync_debug_mode() == 0
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt", "torch"])
def test_a_call_on_a_side_stream_equals_one_on_the_default_stream(bundle, image, backend):
    from runtime import backends
    reason = backends.unavailable_reason(backend, bundle, "cuda")
    if reason is not None:
        pytest.skip(reason)
    eng = AutoFocusEngine(bundle, backend=backend, device="cuda")
    want = eng.detect_batch([image] * 3)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        got = eng.detect_batch([image] * 3)
    torch.cuda.synchronize()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-3)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-5)
