"""The CUDA block kernel of Algorithm 1 (csrc/ops/focus_chips_block.h: block-wide union-find labelling,
rectangles merged as rectangles, chips ordered by a block scan). Here its CPU build (the same per-thread
bodies run thread by thread, runtime._C.focus_chips_block_cpu) is checked against the plain-Python /
SciPy reference and the C++ op on many random maps and edge cases; on a GPU the kernel itself is checked
against the C++ op (which tests/test_ops_maps.py checks against the reference)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime import _C, ops
from conftest import needs_cuda
from reference import focus_chips_cheaper_reference, focus_chips_reference

TOUCHING, CHEAPER = 0, 1  # the kernels' merge codes (csrc/ops/focus_chips.h FocusMerge)


def block_cpu(probs, valid, threshold, dilation, min_size, merge=TOUCHING):
    """The block algorithm over a batch: (chips, batch_index, index of the first map with NaN/inf or -1)."""
    probs = np.ascontiguousarray(probs, np.float32)
    return _C.focus_chips_block_cpu(probs, np.asarray(valid, np.int32).reshape(-1, 2), threshold, dilation, min_size,
                                    merge)


def one_map(prob, threshold, dilation, min_size, merge=TOUCHING):
    chips, index, bad = block_cpu(prob[None], [prob.shape], threshold, dilation, min_size, merge)
    assert bad == -1 and chips.dtype == np.int32 and chips.shape[1:] == (4,)
    assert (index == 0).all()
    return chips


def check_one(prob, threshold, dilation, min_size):
    chips = one_map(prob, threshold, dilation, min_size)
    np.testing.assert_array_equal(chips, focus_chips_reference(prob, threshold, dilation, min_size),
                                  err_msg=f"t={threshold} d={dilation} k={min_size} shape={prob.shape}")
    if prob.size:  # the C++ op (a different labelling and paint-and-relabel merging)
        np.testing.assert_array_equal(chips, ops.focus_chips(prob, threshold, dilation, min_size))


def blob_map(rng, h, w):
    """Low background with Gaussian blobs and single hot cells, like a trained focus map."""
    yy, xx = np.mgrid[:h, :w]
    prob = 0.05 * rng.random((h, w))
    for _ in range(int(rng.integers(0, 8))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.5, 6)
        prob = np.maximum(prob, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    for _ in range(int(rng.integers(0, 6))):
        prob[rng.integers(0, h), rng.integers(0, w)] = rng.uniform(0.3, 1)
    return prob.astype(np.float32)


class TestBlockAlgorithmOnCpu:
    @settings(max_examples=300, deadline=None)
    @given(h=st.integers(1, 24), w=st.integers(1, 24), data=st.data(), d=st.sampled_from([1, 3, 5]),
           k=st.integers(1, 30))
    def test_random_maps_match_reference_and_cpp(self, h, w, data, d, k):
        # values on a coarse grid, so thresholds hit cells exactly; k often larger than the map
        prob = data.draw(hnp.arrays(np.float32, (h, w), elements=st.sampled_from([0.0, 0.0, 0.0, 0.25, 0.5, 1.0])))
        check_one(prob, data.draw(st.sampled_from([0.25, 0.5, 1.0])), d, k)

    @settings(max_examples=300, deadline=None)
    @given(h=st.integers(1, 24), w=st.integers(1, 24), data=st.data(), d=st.sampled_from([1, 3, 5]),
           k=st.integers(1, 30))
    def test_cheaper_rule_matches_reference_and_cpp(self, h, w, data, d, k):
        # the rounds of best pairs, each thread's share of the pairs reduced to the block's maximum
        prob = data.draw(hnp.arrays(np.float32, (h, w), elements=st.sampled_from([0.0, 0.0, 0.0, 0.25, 0.5, 1.0])))
        t = data.draw(st.sampled_from([0.25, 0.5, 1.0]))
        chips = one_map(prob, t, d, k, CHEAPER)
        np.testing.assert_array_equal(chips, focus_chips_cheaper_reference(prob, t, d, k))
        np.testing.assert_array_equal(chips, ops.focus_chips(prob, t, d, k, "cheaper"))

    def test_cheaper_rule_on_focus_map_sized_maps(self):
        rng = np.random.default_rng(24)
        for _ in range(30):
            prob = blob_map(rng, 60, 80)
            np.testing.assert_array_equal(one_map(prob, 0.2, 3, 6, CHEAPER), focus_chips_cheaper_reference(prob, 0.2, 3, 6))

    def test_focus_map_sized_maps(self):
        rng = np.random.default_rng(20)
        for _ in range(60):
            h, w = int(rng.integers(60, 89)), int(rng.integers(80, 126))
            check_one(blob_map(rng, h, w), float(rng.choice([0.1, 0.2, 0.5])), int(rng.choice([1, 3, 5])),
                      int(rng.integers(1, 25)))

    def test_sparse_cells_many_components(self):
        # many isolated cells: hundreds of components and rectangles, several merge rounds
        rng = np.random.default_rng(21)
        for density in (0.01, 0.05, 0.2, 0.5):
            prob = (rng.random((88, 125)) < density).astype(np.float32)
            for d, k in ((1, 1), (1, 3), (3, 4), (5, 9)):
                check_one(prob, 0.5, d, k)

    def test_checkerboard_most_components(self):
        prob = np.zeros((88, 125), np.float32)
        prob[::2, ::2] = 1  # max_components(88, 125) separate cells with d = 1
        chips = one_map(prob, 0.5, 1, 1)
        assert len(chips) == 44 * 63
        check_one(prob, 0.5, 1, 1)
        check_one(prob, 0.5, 1, 2)  # grown to 2 x 2: all touch, one chip
        np.testing.assert_array_equal(one_map(prob, 0.5, 1, 2), [[0, 0, 125, 88]])

    @pytest.mark.parametrize("shape", [(1, 1), (1, 37), (37, 1), (1, 125), (88, 1), (88, 125)])
    def test_full_and_empty_maps(self, shape):
        for d in (1, 3, 5):
            for k in (1, 4, 200):
                check_one(np.ones(shape, np.float32), 0.5, d, k)
                assert len(one_map(np.zeros(shape, np.float32), 0.5, d, k)) == 0
        np.testing.assert_array_equal(one_map(np.ones(shape, np.float32), 0.5, 3, 200), [[0, 0, shape[1], shape[0]]])

    @pytest.mark.parametrize("shape", [(1, 40), (40, 1), (2, 40), (40, 2)])
    def test_thin_maps(self, shape):
        rng = np.random.default_rng(22)
        for _ in range(50):
            prob = (rng.random(shape) < 0.2).astype(np.float32)
            check_one(prob, 0.5, int(rng.choice([1, 3, 5])), int(rng.integers(1, 8)))

    def test_threshold_exact_values(self):
        prob = np.zeros((10, 12), np.float32)
        prob[4, 5] = np.float32(0.3)
        for t, count in ((0.3, 1), (float(np.nextafter(np.float32(0.3), np.float32(1))), 0),
                         (float(np.nextafter(np.float32(0.3), np.float32(0))), 1)):
            assert len(one_map(prob, t, 3, 4)) == count
            check_one(prob, t, 3, 4)

    def test_batch_of_different_valid_sizes(self):
        rng = np.random.default_rng(23)
        for _ in range(20):
            batch, height, width = int(rng.integers(1, 9)), int(rng.integers(1, 60)), int(rng.integers(1, 60))
            probs = np.full((batch, height, width), np.nan, np.float32)  # padding: never read
            valid = np.stack([rng.integers(0, height + 1, batch), rng.integers(0, width + 1, batch)], 1)
            expected, expected_index = [], []
            for b, (h, w) in enumerate(valid):
                probs[b, :h, :w] = blob_map(rng, h, w) if h and w else 0
                if h and w:
                    ref = focus_chips_reference(probs[b, :h, :w], 0.2, 3, 8)
                    expected.append(ref)
                    expected_index += [b] * len(ref)
            chips, index, bad = block_cpu(probs, valid, 0.2, 3, 8)
            assert bad == -1
            np.testing.assert_array_equal(chips, np.concatenate(expected).reshape(-1, 4) if expected else
                                          np.zeros((0, 4), np.int32))
            np.testing.assert_array_equal(index, expected_index)

    @pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
    def test_nan_names_the_map(self, bad_value):
        probs = np.zeros((3, 5, 6), np.float32)
        probs[1, 2, 3] = bad_value
        assert block_cpu(probs, [[5, 6]] * 3, 0.5, 3, 4)[2] == 1
        assert block_cpu(probs, [[5, 6], [2, 6], [5, 6]], 0.5, 3, 4)[2] == -1  # outside map 1's valid rows

    def test_bad_arguments(self):
        probs = np.zeros((1, 5, 6), np.float32)
        with pytest.raises(ValueError, match="dilation"):
            block_cpu(probs, [[5, 6]], 0.5, 2, 4)
        with pytest.raises(ValueError, match="min_size"):
            block_cpu(probs, [[5, 6]], 0.5, 3, 0)
        with pytest.raises(ValueError, match="valid_hw"):
            block_cpu(probs, [[6, 6]], 0.5, 3, 4)
        with pytest.raises(ValueError, match="merge"):
            block_cpu(probs, [[5, 6]], 0.5, 3, 4, 2)


@needs_cuda
@pytest.mark.cuda
class TestBlockKernelOnCuda:
    """The shared-memory kernel (maps up to the device's shared memory) and the global-memory one beyond."""

    def test_batch_of_focus_maps_matches_cpp(self):
        rng = np.random.default_rng(30)
        for _ in range(40):
            probs = np.stack([blob_map(rng, 88, 125) for _ in range(8)])
            valid = np.stack([rng.integers(1, 89, 8), rng.integers(1, 126, 8)], 1).astype(np.int32)
            valid[0] = (88, 125)
            t, d, k = float(rng.choice([0.1, 0.2, 0.5])), int(rng.choice([1, 3, 5])), int(rng.integers(1, 25))
            gpu = ops.focus_chips_batched(torch.from_numpy(probs).cuda(), valid, t, d, k)
            cpu = ops.focus_chips_batched(probs, valid, t, d, k)
            for g, c in zip(gpu, cpu):
                np.testing.assert_array_equal(g.cpu().numpy(), c)

    def test_cheaper_rule_batch_matches_cpp(self):
        rng = np.random.default_rng(33)
        for _ in range(20):
            probs = np.stack([blob_map(rng, 88, 125) for _ in range(8)])
            valid = np.stack([rng.integers(1, 89, 8), rng.integers(1, 126, 8)], 1).astype(np.int32)
            gpu = ops.focus_chips_batched(torch.from_numpy(probs).cuda(), valid, 0.2, 3, 6, "cheaper")
            cpu = ops.focus_chips_batched(probs, valid, 0.2, 3, 6, "cheaper")
            for g, c in zip(gpu, cpu):
                np.testing.assert_array_equal(g.cpu().numpy(), c)

    def test_many_components_and_edge_shapes(self):
        rng = np.random.default_rng(31)
        maps = [np.ones((88, 125), np.float32), np.zeros((88, 125), np.float32), np.ones((1, 125), np.float32),
                np.ones((88, 1), np.float32), (rng.random((88, 125)) < 0.05).astype(np.float32)]
        checker = np.zeros((88, 125), np.float32)
        checker[::2, ::2] = 1
        maps.append(checker)
        for prob in maps:
            for d, k in ((1, 1), (1, 2), (3, 4), (5, 200)):
                np.testing.assert_array_equal(ops.focus_chips(torch.from_numpy(prob).cuda(), 0.5, d, k).cpu().numpy(),
                                              ops.focus_chips(prob, 0.5, d, k))

    def test_map_too_large_for_shared_memory_uses_global_kernel(self):
        rng = np.random.default_rng(32)
        prob = blob_map(rng, 400, 400)  # ~1.6 MB of block arrays: beyond any GPU's shared memory
        np.testing.assert_array_equal(ops.focus_chips(torch.from_numpy(prob).cuda(), 0.2, 3, 8).cpu().numpy(),
                                      ops.focus_chips(prob, 0.2, 3, 8))

    def test_nan_in_one_map_of_the_batch(self):
        probs = np.zeros((4, 88, 125), np.float32)
        probs[2, 40, 50] = np.nan
        with pytest.raises(ValueError, match="^probs: contains NaN"):
            ops.focus_chips_batched(torch.from_numpy(probs).cuda(), np.array([[88, 125]] * 4, np.int32), 0.2, 3, 8)
