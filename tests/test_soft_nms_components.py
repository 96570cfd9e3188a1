"""The CUDA Soft-NMS kernel's algorithm (csrc/ops/soft_nms_components.h: the overlap graph's components run
as independent Soft-NMS sequences and merged by one sort). Here its CPU build (runtime._C.
soft_nms_components_cpu, the same bodies run serially) is checked against the float64 literal reference and
against the C++ op (exactly: same float operations); on a GPU the kernel's three paths (one warp, components,
the sequential block for segments over 2,048 boxes) are checked against the C++ op."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import _C, ops
from conftest import needs_cuda
from reference import soft_nms_reference
from test_ops_boxes import compare_soft_nms, near_iou_threshold, random_boxes, random_scores

METHODS = {"linear": 0, "gaussian": 1, "hard": 2}


def clustered(rng, n, objects, labels=None):
    """Detections around `objects` objects (benchmarks/ops.py's clustered_boxes, smaller or larger)."""
    centres = rng.uniform(0, 1000, (objects, 2))
    sizes = rng.uniform(8, 120, (objects, 2))
    pick = rng.integers(0, objects, n)
    c = centres[pick] + rng.normal(0, 4, (n, 2))
    s = sizes[pick] * rng.uniform(0.8, 1.2, (n, 2))
    boxes = np.concatenate([c - s / 2, c + s / 2], 1).astype(np.float32)
    lab = rng.integers(0, labels, n).astype(np.int64) if labels else None
    return boxes, rng.random(n).astype(np.float32), lab


def both(boxes, scores, labels, method="gaussian", sigma=0.55, iou_threshold=0.3, score_threshold=0.001,
         max_output=None):
    """(components CPU build, C++ soft_nms) results."""
    args = (boxes, scores, labels, METHODS[method], sigma, iou_threshold, score_threshold,
            -1 if max_output is None else max_output)
    return _C.soft_nms_components_cpu(*args), _C.soft_nms_cpu(*args)


def assert_same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


class TestComponentsOnCpu:
    @settings(max_examples=150, deadline=None)
    @given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 400), objects=st.integers(1, 60),
           labels=st.sampled_from([None, 1, 3]), method=st.sampled_from(sorted(METHODS)),
           score_threshold=st.sampled_from([0.0, 0.001, 0.1, 0.5]), max_output=st.sampled_from([None, 0, 1, 7, 100]),
           ties=st.booleans())
    def test_random_match_cpp_exactly(self, seed, n, objects, labels, method, score_threshold, max_output, ties):
        rng = np.random.default_rng(seed)
        boxes, scores, lab = clustered(rng, n, objects, labels)
        if ties:
            scores = (np.round(scores * 4) / 4).astype(np.float32)
        assert_same(*both(boxes, scores, lab, method, 0.55, 0.3, score_threshold, max_output))

    def test_random_match_float64_reference(self):
        rng = np.random.default_rng(40)
        parted = 0
        for case in range(300):
            n = int(rng.integers(0, 60))
            boxes = random_boxes(rng, n, clusters=int(rng.integers(1, 5)) if case % 2 else None)
            scores = random_scores(rng, n, ties=case % 5 == 0)
            labels = rng.integers(0, 3, n).astype(np.int64) if case % 3 == 0 else None
            method = ("gaussian", "linear", "hard")[case % 3]
            kw = dict(method=method, sigma=float(rng.choice([0.55, 0.3, 1.0])),
                      iou_threshold=float(rng.uniform(0.1, 0.7)), score_threshold=float(rng.choice([0.001, 0.1, 0.3])))
            if method != "gaussian" and near_iou_threshold(boxes, kw["iou_threshold"]):
                continue
            keep, sc = _C.soft_nms_components_cpu(boxes, scores, labels, METHODS[method], kw["sigma"],
                                                  kw["iou_threshold"], kw["score_threshold"], -1)
            ref_keep, ref_sc = soft_nms_reference(boxes, scores, labels, **kw)
            parted += compare_soft_nms(keep, sc, ref_keep, ref_sc, kw["score_threshold"])
        assert parted < 3

    @pytest.mark.parametrize("labels", [None, 5])
    @pytest.mark.parametrize("method", sorted(METHODS))
    def test_benchmark_size(self, labels, method):
        # 2,000 boxes around 100 objects (the benchmark's case): components of hundreds of boxes
        rng = np.random.default_rng(41)
        boxes, scores, lab = clustered(rng, 2048, 100, labels)
        assert_same(*both(boxes, scores, lab, method))
        assert_same(*both(boxes, scores, lab, method, max_output=100))

    def test_degenerate_boxes(self):
        rng = np.random.default_rng(42)
        boxes = np.repeat(np.array([[10, 10, 20, 20]], np.float32), 50, 0)  # identical boxes: one component
        boxes[::5] = [[5, 5, 5, 9]]  # zero-area boxes: linked to nothing
        boxes[1::7] = [[20, 10, 30, 20]]  # touching (IoU 0) the others
        for scores in (rng.random(50).astype(np.float32), np.full(50, 0.5, np.float32)):  # all ties
            for method in METHODS:
                assert_same(*both(boxes, scores, None, method))

    def test_empty_and_all_below_threshold(self):
        empty = both(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), None)
        assert len(empty[0][0]) == 0 and len(empty[1][0]) == 0
        rng = np.random.default_rng(43)
        boxes, _, _ = clustered(rng, 300, 10)
        low = np.full(300, 0.01, np.float32)
        keep, _ = _C.soft_nms_components_cpu(boxes, low, None, 1, 0.55, 0.3, 0.5, -1)
        assert len(keep) == 0

    def test_more_than_the_cap_is_refused(self):
        boxes = np.zeros((2049, 4), np.float32)
        with pytest.raises(ValueError, match="2048"):
            _C.soft_nms_components_cpu(boxes, np.zeros(2049, np.float32), None, 1, 0.55, 0.3, 0.001, -1)


@needs_cuda
@pytest.mark.cuda
class TestComponentsKernelOnCuda:
    @staticmethod
    def check(boxes, scores, labels, **kw):
        cuda = ops.soft_nms(torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda(),
                            None if labels is None else torch.from_numpy(labels).cuda(), **kw)
        cpu = ops.soft_nms(boxes, scores, labels, **kw)
        np.testing.assert_array_equal(cuda[0].cpu().numpy(), cpu[0])
        # expf may differ in the last ulp between the device and the host
        np.testing.assert_allclose(cuda[1].cpu().numpy(), cpu[1], rtol=1e-6, atol=0)

    @pytest.mark.parametrize("n", [1, 200, 256, 257, 1000, 2048, 2049, 5000])  # one warp, components, sequential
    @pytest.mark.parametrize("labels", [None, 5])
    def test_sizes_match_cpp(self, n, labels):
        rng = np.random.default_rng(50 + n)
        boxes, scores, lab = clustered(rng, n, max(1, n // 20), labels)
        for method in ("gaussian", "linear", "hard"):
            self.check(boxes, scores, lab, method=method)
            self.check(boxes, scores, lab, method=method, max_output=50)

    def test_segments_of_every_path(self):
        rng = np.random.default_rng(51)
        sizes = [0, 3, 256, 900, 2048, 2500, 40]
        boxes, scores, labels = clustered(rng, sum(sizes), 120, 4)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        cuda = ops.soft_nms_segments(torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda(),
                                     torch.from_numpy(offsets).cuda(), torch.from_numpy(labels).cuda())
        cpu = ops.soft_nms_segments(boxes, scores, offsets, labels)
        np.testing.assert_array_equal(cuda[0].cpu().numpy(), cpu[0])
        np.testing.assert_allclose(cuda[1].cpu().numpy(), cpu[1], rtol=1e-6, atol=0)
        np.testing.assert_array_equal(cuda[2].cpu().numpy(), cpu[2])
