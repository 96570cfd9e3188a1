"""The backends' output-ownership contract (runtime/backends/__init__.py): a backend's outputs are valid
until its next infer call; the cascade copies whatever it keeps longer.

A backend that reuses one output buffer per optimization profile, as TensorRT's does
(tests/profile_buffer_backend.py), run through detect_batch with more images than a profile's max
batch and box_score None on every transition (the focus maps are then the network's own outputs, kept
until the scale's last batch is queued), must return exactly the onnxruntime backend's detections.
The real TensorRT backend runs the same contract where tensorrt and a GPU exist (skipped here)."""
import numpy as np
import pytest
import torch

from engine_fixtures import val_images
from profile_buffer_backend import ProfileBufferBackend
from runtime import backends, engine as engine_module
from runtime.engine import AutoFocusEngine

N_IMAGES = 5            # > the test bundle's max batch (2) of the scale-1 bucket: several batches a profile
# box_score None: the focus maps are the network's own outputs. The random test network's focus maps lie
# in ~[0.113, 0.119]: a threshold inside that range makes the chips depend on each map's values (at the
# bundle's 0.02 every chip is the whole image, whatever the map holds).
NO_BOX_SCORE = [{"box_score": None, "threshold": 0.118, "dilation": 1}] * 2


@pytest.fixture(scope="module")
def images():
    return [im for im, _, _ in val_images(N_IMAGES)]


def _chips_follow_the_maps(dets, images) -> bool:
    """Some scale-2 chip is not its whole image: the maps' values decided it."""
    return any(len(d.chips[1]) and not np.array_equal(d.chips[1], [[0, 0, im.shape[1], im.shape[0]]])
               for d, im in zip(dets, images))


def _same_detections(got, want, exact=True):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(g.chips) == len(w.chips)
        for gc, wc in zip(g.chips, w.chips):
            np.testing.assert_array_equal(gc, wc) if exact else np.testing.assert_allclose(gc, wc, atol=1e-3)
        if exact:
            np.testing.assert_array_equal(g.boxes, w.boxes)
            np.testing.assert_array_equal(g.scores, w.scores)
        else:
            np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-3)
            np.testing.assert_allclose(g.scores, w.scores, atol=1e-5)
        np.testing.assert_array_equal(g.labels, w.labels)


@pytest.mark.parametrize("padding", ["bucket", "shared"])
def test_reused_output_buffers_give_onnxruntime_detections(bundle, images, monkeypatch, padding):
    options = dict(padding=padding, chip_params=NO_BOX_SCORE)
    reference = AutoFocusEngine(bundle, backend="onnxruntime", device="cpu", **options)
    want = reference.detect_batch(images)

    made = []

    def load_profile_buffers(name, b, device, **kw):
        made.append(ProfileBufferBackend(b, device).load())
        return made[-1]

    monkeypatch.setattr(engine_module.backends, "load_backend", load_profile_buffers)
    eng = AutoFocusEngine(bundle, backend="onnxruntime", device="cpu", **options)
    assert eng._backend is made[0]
    got = eng.detect_batch(images)

    # The case under test happened: a profile ran a full batch and then another batch in the same scale,
    # and the cascade cut chips from scale 1's maps (so scale 2 ran).
    calls = made[0].calls
    max_batch = dict(enumerate(bundle.max_batch))
    assert any(p == q and n == max_batch[p] for (p, n), (q, _) in zip(calls, calls[1:])), calls
    assert _chips_follow_the_maps(want, images)
    _same_detections(got, want)


# ------------------------------------------------------------------------------------ TensorRT

def _tensorrt_skip_reason(bundle=None):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed: the TensorRT backend's contract test runs where it is"
    reason = backends.cuda_unavailable_reason()
    if reason is not None:
        return f"{reason}: the TensorRT backend's contract test needs a GPU"
    return None


needs_tensorrt = pytest.mark.skipif(_tensorrt_skip_reason() is not None, reason=_tensorrt_skip_reason() or "")


@needs_tensorrt
@pytest.mark.cuda
def test_tensorrt_backend_contract(bundle, images):
    """The real TensorRT backend through detect_batch: the cascade on its outputs as returned equals the
    cascade on copies taken the moment each infer returns (nothing read after the next infer)."""
    reason = backends.unavailable_reason("tensorrt", bundle, "cuda")
    if reason is not None:
        pytest.skip(f"tensorrt backend: {reason}")
    eng = AutoFocusEngine(bundle, backend="tensorrt", device="cuda", chip_params=NO_BOX_SCORE)
    got = eng.detect_batch(images)
    inner = eng.infer
    eng.infer = lambda batch: {k: v.clone() for k, v in inner(batch).items()}
    try:
        want = eng.detect_batch(images)
    finally:
        del eng.infer
    assert sum(len(d.chips[1]) for d in want) > 0
    _same_detections(got, want, exact=False)

    # Backend level: float32 outputs of the contract's shapes, read from a profile's buffers; a batch
    # larger than the profile's max batch is refused.
    backend = eng._backend
    h, w = bundle.buckets[0]
    mb = bundle.max_batch[0]
    x = torch.randn(mb, 3, h, w, device="cuda")
    out = backend.infer(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == backends.output_shapes(bundle, (mb, 3, h, w))
    assert all(v.dtype == torch.float32 for v in out.values())
    with backends.load_backend("onnxruntime", bundle, "cpu") as ort_backend:
        ref = ort_backend.infer(x.cpu().numpy())
    np.testing.assert_allclose(out["focus"].cpu().numpy(), ref["focus"], atol=2e-3)
    with pytest.raises(ValueError, match="profile"):
        backend.infer(torch.randn(mb + 1, 3, h, w, device="cuda"))
    eng.close()
