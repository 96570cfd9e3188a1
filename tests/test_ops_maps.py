"""Map ops (runtime.ops): dilate, connected_components, focus_chips (+ batched), chips_to_image, paint_boxes,
crop_resize.

Each op is checked against an independent reference in tests/reference.py (OpenCV, SciPy, NumPy float64,
plain Python from docs/design.md's Algorithm 1), on NumPy arrays and torch CPU tensors (CUDA: against the
reference and against the CPU kernels, where a GPU is present), plus hand-worked cases, edge cases
(hypothesis), bad input and empty input.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime import ops
from conftest import DEVICES, from_device, needs_cuda, on_device
from reference import (
    chips_to_image_reference,
    connected_components_reference,
    crop_resize_cv2_resize_reference,
    crop_resize_reference,
    crop_resize_warp_affine_reference,
    dilate_reference,
    focus_chips_cheaper_reference,
    focus_chips_reference,
    paint_boxes_reference,
)

CASES_PER_DEVICE = 1000  # x 2 devices here ("numpy", "cpu") = 2,000 random cases per op
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)




def random_mask(rng, max_side=30):
    h, w = rng.integers(0, max_side + 1, 2)
    values = rng.integers(0, 256, (h, w)).astype(np.uint8)  # any nonzero is "on"
    return np.where(rng.random((h, w)) < rng.random(), values, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------

class TestDilate:
    @pytest.mark.parametrize("device", DEVICES)
    def test_random_maps_match_cv2(self, device):
        rng = np.random.default_rng(1)
        for _ in range(CASES_PER_DEVICE):
            mask = random_mask(rng)
            d = int(rng.choice([1, 3, 5, 7, 9, 31]))
            out = from_device(ops.dilate(on_device(mask, device), d), device)
            assert out.dtype == np.uint8 and out.shape == mask.shape
            np.testing.assert_array_equal(out, dilate_reference(mask, d), err_msg=f"d={d}\n{mask}")

    @settings(max_examples=150, deadline=None)
    @given(mask=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=9),
                           elements=st.sampled_from([0, 0, 1, 7, 255])),
           d=st.sampled_from([1, 3, 5, 11]))
    def test_edge_cases_match_cv2(self, mask, d):
        np.testing.assert_array_equal(ops.dilate(mask, d), dilate_reference(mask, d))

    def test_hand_worked(self):
        mask = np.zeros((4, 5), np.uint8)
        mask[0, 0] = 9  # a corner pixel: the square is cut by the border, nothing wraps
        expected = np.zeros((4, 5), np.uint8)
        expected[:2, :2] = 1
        np.testing.assert_array_equal(ops.dilate(mask, 3), expected)
        np.testing.assert_array_equal(ops.dilate(mask, 1), (mask != 0).astype(np.uint8))
        np.testing.assert_array_equal(ops.dilate(np.ones((3, 3), np.uint8) * 5, 5), np.ones((3, 3), np.uint8))

    @pytest.mark.parametrize("d", [0, -1, 2, 4])
    def test_bad_size_names_d(self, d):
        with pytest.raises(ValueError, match="^d:"):
            ops.dilate(np.zeros((3, 3), np.uint8), d)

    def test_bad_input(self):
        with pytest.raises(TypeError, match="^d:"):
            ops.dilate(np.zeros((3, 3), np.uint8), 3.0)
        with pytest.raises(TypeError, match="^mask:"):
            ops.dilate(np.zeros((3, 3), np.float32), 3)
        with pytest.raises(TypeError, match="^mask:"):
            ops.dilate([[0, 1]], 3)
        with pytest.raises(ValueError, match="^mask:"):
            ops.dilate(np.zeros((3, 3, 1), np.uint8), 3)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("shape", [(0, 0), (0, 4), (4, 0)])
    def test_empty(self, device, shape):
        out = from_device(ops.dilate(on_device(np.zeros(shape, np.uint8), device), 3), device)
        assert out.shape == shape and out.dtype == np.uint8

    def test_non_contiguous_tensor(self):
        mask = (np.random.default_rng(2).random((12, 10)) < 0.1).astype(np.uint8)
        out = ops.dilate(torch.from_numpy(mask).t(), 3)
        assert isinstance(out, torch.Tensor)
        np.testing.assert_array_equal(out.numpy(), dilate_reference(mask.T, 3))

    @needs_cuda
    @pytest.mark.cuda
    def test_cuda_matches_cpu(self):
        rng = np.random.default_rng(3)
        for _ in range(300):
            mask, d = random_mask(rng, 200), int(rng.choice([1, 3, 5]))
            np.testing.assert_array_equal(ops.dilate(torch.from_numpy(mask).cuda(), d).cpu().numpy(),
                                          ops.dilate(mask, d))


# ---------------------------------------------------------------------------------------------

class TestConnectedComponents:
    @pytest.mark.parametrize("device", DEVICES)
    def test_random_maps_match_cv2(self, device):
        rng = np.random.default_rng(4)
        for _ in range(CASES_PER_DEVICE):
            mask = random_mask(rng)
            labels, boxes = (from_device(y, device) for y in ops.connected_components(on_device(mask, device)))
            ref_labels, ref_boxes = connected_components_reference(mask)
            assert labels.dtype == np.int32 and boxes.dtype == np.int32 and boxes.shape[1:] == (4,)
            np.testing.assert_array_equal(labels, ref_labels, err_msg=str(mask))
            np.testing.assert_array_equal(boxes, ref_boxes, err_msg=str(mask))

    def test_numbering_is_raster_order_of_first_pixels(self):
        # Checked without cv2: the first pixel of label c comes before that of c + 1; the partition is
        # SciPy's. (cv2's *default* algorithm numbers in block order, so it only agrees up to renumbering.)
        from scipy import ndimage
        rng = np.random.default_rng(5)
        for _ in range(200):
            mask = random_mask(rng, 40)
            labels, boxes = ops.connected_components(mask)
            scipy_labels, count = ndimage.label(mask != 0, structure=np.ones((3, 3), int))
            assert len(boxes) == count
            firsts = [np.flatnonzero(labels.ravel() == c)[0] for c in range(1, count + 1)]
            assert np.all(np.diff(firsts) > 0)
            # same partition: each of our labels maps to exactly one SciPy label and back
            pairs = set(zip(labels[mask != 0].tolist(), scipy_labels[mask != 0].tolist()))
            assert len(pairs) == count

    def test_large_map(self):
        mask = (np.random.default_rng(6).random((500, 700)) < 0.55).astype(np.uint8)
        labels, boxes = ops.connected_components(mask)
        ref_labels, ref_boxes = connected_components_reference(mask)
        np.testing.assert_array_equal(labels, ref_labels)
        np.testing.assert_array_equal(boxes, ref_boxes)

    def test_hand_worked(self):
        mask = np.array([[0, 1, 0, 0, 1],
                         [1, 0, 0, 0, 1],
                         [0, 0, 1, 0, 0],
                         [1, 1, 0, 0, 0]], np.uint8)
        labels, boxes = ops.connected_components(mask)
        # (0,1)-(1,0) touch diagonally and (2,2) is 8-adjacent to neither; (3,0)-(3,1) are one component.
        np.testing.assert_array_equal(labels, [[0, 1, 0, 0, 2], [1, 0, 0, 0, 2], [0, 0, 3, 0, 0], [3, 3, 0, 0, 0]])
        np.testing.assert_array_equal(boxes, [[0, 0, 2, 2], [4, 0, 5, 2], [0, 2, 3, 4]])

    @pytest.mark.parametrize("shape", [(1, 1), (7, 1), (1, 9), (9, 11), (10, 12)])
    def test_most_components_fill_the_box_buffer(self, shape):
        mask = np.zeros(shape, np.uint8)
        mask[::2, ::2] = 1  # isolated pixels: the most components a map of this size can hold
        labels, boxes = ops.connected_components(mask)
        assert len(boxes) == math.ceil(shape[0] / 2) * math.ceil(shape[1] / 2) == labels.max()
        np.testing.assert_array_equal(boxes, connected_components_reference(mask)[1])

    @settings(max_examples=150, deadline=None)
    @given(mask=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=10),
                           elements=st.sampled_from([0, 1, 200])))
    def test_edge_cases_match_cv2(self, mask):
        labels, boxes = ops.connected_components(mask)
        ref_labels, ref_boxes = connected_components_reference(mask)
        np.testing.assert_array_equal(labels, ref_labels)
        np.testing.assert_array_equal(boxes, ref_boxes)

    @pytest.mark.parametrize("device", DEVICES)
    def test_all_on_all_off_and_empty(self, device):
        labels, boxes = (from_device(y, device) for y in ops.connected_components(on_device(np.ones((3, 4), np.uint8), device)))
        np.testing.assert_array_equal(labels, np.ones((3, 4)))
        np.testing.assert_array_equal(boxes, [[0, 0, 4, 3]])
        labels, boxes = (from_device(y, device) for y in ops.connected_components(on_device(np.zeros((3, 4), np.uint8), device)))
        assert not labels.any() and boxes.shape == (0, 4)
        labels, boxes = (from_device(y, device) for y in ops.connected_components(on_device(np.zeros((0, 4), np.uint8), device)))
        assert labels.shape == (0, 4) and boxes.shape == (0, 4)

    def test_bad_input(self):
        with pytest.raises(TypeError, match="^mask:"):
            ops.connected_components(np.zeros((3, 3), bool))
        with pytest.raises(ValueError, match="^mask:"):
            ops.connected_components(np.zeros(3, np.uint8))

    @needs_cuda
    @pytest.mark.cuda
    def test_cuda_matches_cpu(self):
        rng = np.random.default_rng(7)
        shapes = [tuple(rng.integers(1, 300, 2)) for _ in range(200)] + [(1000, 1000), (1, 5000), (5000, 1)]
        for shape in shapes:
            mask = (rng.random(shape) < rng.random()).astype(np.uint8)
            labels, boxes = ops.connected_components(torch.from_numpy(mask).cuda())
            cpu_labels, cpu_boxes = ops.connected_components(mask)
            np.testing.assert_array_equal(labels.cpu().numpy(), cpu_labels)
            np.testing.assert_array_equal(boxes.cpu().numpy(), cpu_boxes)


# ---------------------------------------------------------------------------------------------

def random_focus_map(rng, max_side=40, shape=None):
    """Mostly-low probabilities with a few hot cells or blobs, sometimes at the borders."""
    h, w = shape or (int(v) for v in rng.integers(1, max_side + 1, 2))
    prob = (rng.random((h, w)) * 0.1).astype(np.float32)
    for _ in range(int(rng.integers(0, 6))):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        if rng.random() < 0.3:  # a blob touching a border
            y = 0 if rng.random() < 0.5 else h - 1
        bh, bw = (int(v) for v in rng.integers(1, 4, 2))
        prob[y:y + bh, x:x + bw] = rng.uniform(0.2, 1.0)
    return prob


def check_chip_invariants(chips, prob, threshold, dilation, min_size):
    """Properties DESIGN states, independent of any implementation."""
    h, w = prob.shape
    assert np.all((chips[:, 0] >= 0) & (chips[:, 1] >= 0) & (chips[:, 2] <= w) & (chips[:, 3] <= h))
    assert np.all(chips[:, 2] - chips[:, 0] >= min(min_size, w)) and np.all(chips[:, 3] - chips[:, 1] >= min(min_size, h))
    assert [tuple(c[[1, 0]]) for c in chips] == sorted(tuple(c[[1, 0]]) for c in chips)
    covered = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in chips:
        covered[y1:y2, x1:x2] = True
    assert covered[dilate_reference(prob >= np.float32(threshold), dilation) != 0].all()
    for i in range(len(chips)):  # merged: no two chips overlap or touch (8-adjacency)
        for j in range(i + 1, len(chips)):
            a, b = chips[i], chips[j]
            assert a[0] > b[2] or b[0] > a[2] or a[1] > b[3] or b[1] > a[3], (a, b)


class TestFocusChips:
    @pytest.mark.parametrize("device", DEVICES)
    def test_random_maps_match_reference(self, device):
        rng = np.random.default_rng(8)
        for _ in range(CASES_PER_DEVICE):
            prob = random_focus_map(rng)
            t, d, k = float(rng.choice([0.02, 0.2, 0.5])), int(rng.choice([1, 3, 5])), int(rng.integers(1, 25))
            chips = from_device(ops.focus_chips(on_device(prob, device), t, d, k), device)
            assert chips.dtype == np.int32 and chips.shape[1:] == (4,)
            np.testing.assert_array_equal(chips, focus_chips_reference(prob, t, d, k), err_msg=f"t={t} d={d} k={k}")

    @settings(max_examples=200, deadline=None)
    @given(h=st.integers(1, 12), w=st.integers(1, 12), data=st.data(),
           d=st.sampled_from([1, 3, 5]), k=st.integers(1, 16))
    def test_edge_cases_match_reference(self, h, w, data, d, k):
        # small maps (often smaller than k), single pixels, all-on maps, blobs on every border
        prob = data.draw(hnp.arrays(np.float32, (h, w), elements=st.sampled_from([0.0, 0.0, float(np.float32(0.3)), 1.0])))
        chips = ops.focus_chips(prob, 0.3, d, k)
        np.testing.assert_array_equal(chips, focus_chips_reference(prob, 0.3, d, k))
        check_chip_invariants(chips, prob, 0.3, d, k)

    def test_invariants_on_random_maps(self):
        rng = np.random.default_rng(9)
        for _ in range(200):
            prob = random_focus_map(rng, 60)
            d, k = int(rng.choice([1, 3])), int(rng.integers(1, 21))
            check_chip_invariants(ops.focus_chips(prob, 0.2, d, k), prob, 0.2, d, k)

    @staticmethod
    def hot(shape, *cells):
        prob = np.zeros(shape, np.float32)
        for y, x in cells:
            prob[y, x] = 1.0
        return prob

    @pytest.mark.parametrize("cells, shape, d, k, expected", [
        # one cell at (5, 5): [5, 6) grows by (4 - 1) // 2 = 1 to the left, the odd cell to the right
        ([(5, 5)], (10, 10), 1, 4, [[4, 4, 8, 8]]),
        # dilated to [4, 7): (4 - 3) // 2 = 0 to the left, the extra cell to the right
        ([(5, 5)], (10, 10), 3, 4, [[4, 4, 8, 8]]),
        # crosses the top-left border: shifted right/down, not shrunk
        ([(0, 0)], (10, 10), 1, 4, [[0, 0, 4, 4]]),
        # crosses the bottom-right border: [8, 12) shifted left/up to [6, 10)
        ([(9, 9)], (10, 10), 1, 4, [[6, 6, 10, 10]]),
        # map smaller than k: the chip is the whole map
        ([(1, 2)], (3, 5), 1, 8, [[0, 0, 5, 3]]),
        # grown rects [4, 8) and [8, 12) touch side by side: merged
        ([(5, 5), (5, 9)], (20, 20), 1, 4, [[4, 4, 12, 8]]),
        # [4, 8) and [9, 13) leave column 8 free: two chips, sorted by (y1, x1)
        ([(5, 10), (5, 5)], (20, 20), 1, 4, [[4, 4, 8, 8], [9, 4, 13, 8]]),
        # corners touching diagonally merge (8-connectivity)
        ([(5, 5), (9, 9)], (20, 20), 1, 4, [[4, 4, 12, 12]]),
        # A=[4,4,8,8] and B=[8,8,12,12] merge to [4,4,12,12], which then touches C=[12,3,16,7] (touching
        # neither A nor B): the second round merges all three
        ([(5, 5), (9, 9), (4, 13)], (20, 20), 1, 4, [[4, 3, 16, 12]]),
        # sorted by y1 first: the lower-left chip comes after the upper-right one
        ([(15, 2), (2, 15)], (20, 20), 1, 4, [[14, 1, 18, 5], [1, 14, 5, 18]]),
        # k = 1 and d = 1: every hot cell its own chip unless adjacent
        ([(0, 0), (0, 2), (1, 3)], (4, 4), 1, 1, [[0, 0, 1, 1], [2, 0, 4, 2]]),
    ])
    def test_hand_worked(self, cells, shape, d, k, expected):
        chips = ops.focus_chips(self.hot(shape, *cells), 0.5, d, k)
        np.testing.assert_array_equal(chips, np.array(expected, np.int32).reshape(-1, 4))

    def test_ring_gives_one_enclosing_chip(self):
        prob = np.zeros((30, 30), np.float32)
        prob[5:20, 5] = prob[5:20, 19] = prob[5, 5:20] = prob[19, 5:20] = 0.9  # a hollow square
        np.testing.assert_array_equal(ops.focus_chips(prob, 0.5, 1, 4), [[5, 5, 20, 20]])

    def test_threshold_is_inclusive_in_float32(self):
        prob = np.full((8, 8), np.float32(0.02), np.float32)  # float32(0.02) < 0.02 as a double
        assert len(ops.focus_chips(prob, 0.02, 3, 4)) == 1
        assert len(ops.focus_chips(prob, np.nextafter(np.float32(0.02), np.float32(1)), 3, 4)) == 0

    @pytest.mark.parametrize("device", DEVICES)
    def test_empty(self, device):
        for prob in (np.zeros((5, 6), np.float32), np.zeros((0, 6), np.float32), np.zeros((6, 0), np.float32)):
            chips = from_device(ops.focus_chips(on_device(prob, device), 0.5, 3, 4), device)
            assert chips.shape == (0, 4) and chips.dtype == np.int32

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_nan_names_prob(self, device, bad):
        prob = np.zeros((5, 6), np.float32)
        prob[2, 3] = bad
        with pytest.raises(ValueError, match="^prob: contains NaN"):
            ops.focus_chips(on_device(prob, device), 0.5, 3, 4)

    def test_bad_input(self):
        prob = np.zeros((5, 6), np.float32)
        with pytest.raises(TypeError, match="^prob:"):
            ops.focus_chips(prob.astype(np.float64), 0.5, 3, 4)
        with pytest.raises(ValueError, match="^prob:"):
            ops.focus_chips(prob[None], 0.5, 3, 4)
        with pytest.raises(ValueError, match="^threshold:"):
            ops.focus_chips(prob, float("nan"), 3, 4)
        with pytest.raises(TypeError, match="^threshold:"):
            ops.focus_chips(prob, "0.5", 3, 4)
        for d in (0, 2, -3):
            with pytest.raises(ValueError, match="^dilation:"):
                ops.focus_chips(prob, 0.5, d, 4)
        for k in (0, -1):
            with pytest.raises(ValueError, match="^min_size:"):
                ops.focus_chips(prob, 0.5, 3, k)
        with pytest.raises(TypeError, match="^min_size:"):
            ops.focus_chips(prob, 0.5, 3, 4.0)

    # --- batched form ---
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("merge", ["touching", "cheaper"])
    def test_batched_equals_single_on_valid_regions(self, device, merge):
        reference = focus_chips_cheaper_reference if merge == "cheaper" else focus_chips_reference
        rng = np.random.default_rng(10)
        for _ in range(60):
            batch, height, width = int(rng.integers(1, 6)), int(rng.integers(1, 40)), int(rng.integers(1, 40))
            probs = np.full((batch, height, width), np.nan, np.float32)  # padding is never read
            valid = np.stack([rng.integers(0, height + 1, batch), rng.integers(0, width + 1, batch)], 1)
            expected, expected_index = [], []
            for b, (h, w) in enumerate(valid):
                probs[b, :h, :w] = random_focus_map(rng, shape=(h, w)) if h and w else 0
                if h and w:
                    ref = reference(probs[b, :h, :w], 0.2, 3, 8)
                    expected.append(ref)
                    expected_index += [b] * len(ref)
            chips, index = ops.focus_chips_batched(on_device(probs, device), valid.astype(np.int32), 0.2, 3, 8, merge)
            chips, index = from_device(chips, device), from_device(index, device)
            np.testing.assert_array_equal(chips, np.concatenate(expected).reshape(-1, 4) if expected else np.zeros((0, 4)))
            np.testing.assert_array_equal(index, expected_index)
            assert chips.dtype == np.int32 and index.dtype == np.int32

    @pytest.mark.parametrize("device", DEVICES)
    def test_batched_empty_and_bad_input(self, device):
        chips, index = ops.focus_chips_batched(on_device(np.zeros((0, 4, 4), np.float32), device), np.zeros((0, 2), np.int32),
                                               0.2, 3, 4)
        assert from_device(chips, device).shape == (0, 4) and from_device(index, device).shape == (0,)
        probs = np.zeros((2, 4, 4), np.float32)
        with pytest.raises(ValueError, match="^valid_hw:"):
            ops.focus_chips_batched(on_device(probs, device), [[4, 4]], 0.2, 3, 4)
        with pytest.raises(ValueError, match="^valid_hw:"):
            ops.focus_chips_batched(on_device(probs, device), [[4, 5], [4, 4]], 0.2, 3, 4)
        with pytest.raises(ValueError, match="^valid_hw:"):
            ops.focus_chips_batched(on_device(probs, device), [[-1, 4], [4, 4]], 0.2, 3, 4)
        with pytest.raises(TypeError, match="^valid_hw:"):
            ops.focus_chips_batched(on_device(probs, device), [[4.0, 4.0], [4, 4]], 0.2, 3, 4)
        with pytest.raises(ValueError, match="^probs:"):
            ops.focus_chips_batched(on_device(probs[0], device), [[4, 4]], 0.2, 3, 4)
        probs[1, 1, 1] = np.nan
        with pytest.raises(ValueError, match="^probs: contains NaN"):
            ops.focus_chips_batched(on_device(probs, device), [[4, 4], [4, 4]], 0.2, 3, 4)

    @needs_cuda
    @pytest.mark.cuda
    @pytest.mark.parametrize("merge", ["touching", "cheaper"])
    def test_cuda_matches_cpu(self, merge):
        rng = np.random.default_rng(11)
        for _ in range(300):
            prob = random_focus_map(rng, 130)
            t, d, k = float(rng.choice([0.02, 0.2])), int(rng.choice([1, 3])), int(rng.integers(1, 25))
            np.testing.assert_array_equal(ops.focus_chips(torch.from_numpy(prob).cuda(), t, d, k, merge).cpu().numpy(),
                                          ops.focus_chips(prob, t, d, k, merge))
        prob = random_focus_map(rng, shape=(400, 400))  # the global-memory kernel
        np.testing.assert_array_equal(ops.focus_chips(torch.from_numpy(prob).cuda(), 0.2, 3, 8, merge).cpu().numpy(),
                                      ops.focus_chips(prob, 0.2, 3, 8, merge))
        probs = np.stack([np.pad(p, ((0, 90 - p.shape[0]), (0, 90 - p.shape[1])))
                          for p in (random_focus_map(rng, 90) for _ in range(50))])
        valid = rng.integers(0, 91, (50, 2)).astype(np.int32)
        gpu = ops.focus_chips_batched(torch.from_numpy(probs).cuda(), valid, 0.2, 3, 16, merge)
        cpu = ops.focus_chips_batched(probs, valid, 0.2, 3, 16, merge)
        for g, c in zip(gpu, cpu):
            np.testing.assert_array_equal(g.cpu().numpy(), c)



def cells(r) -> int:
    return int((r[2] - r[0]) * (r[3] - r[1]))


def check_cheaper_invariants(chips, prob, threshold, dilation, min_size):
    """What the cheaper rule promises whatever its tie-breaks: every dilated positive cell inside a chip,
    each chip at least min(k, map side) a side and inside the map, (y1, x1, y2, x2) order, and no touching
    pair left whose grown enclosing chip would cost no more cells than the two."""
    h, w = prob.shape
    covered = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in chips:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert x2 - x1 >= min(min_size, w) and y2 - y1 >= min(min_size, h)
        covered[y1:y2, x1:x2] = True
    assert covered[dilate_reference(prob >= np.float32(threshold), dilation) != 0].all()
    keys = [(c[1], c[0], c[3], c[2]) for c in chips.tolist()]
    assert keys == sorted(keys)
    for i in range(len(chips)):
        for j in range(i + 1, len(chips)):
            a, b = chips[i], chips[j]
            if a[0] > b[2] or b[0] > a[2] or a[1] > b[3] or b[1] > a[3]:
                continue
            u = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]  # already >= k a side
            assert cells(u) > cells(a) + cells(b), (a, b)


class TestFocusChipsCheaper:
    """merge="cheaper": touching chips merge only when the enclosing chip costs no more cells."""

    @pytest.mark.parametrize("device", DEVICES)
    def test_random_maps_match_reference(self, device):
        rng = np.random.default_rng(12)
        for _ in range(CASES_PER_DEVICE // 2):
            prob = random_focus_map(rng)
            t, d, k = float(rng.choice([0.02, 0.2, 0.5])), int(rng.choice([1, 3, 5])), int(rng.integers(1, 25))
            chips = from_device(ops.focus_chips(on_device(prob, device), t, d, k, "cheaper"), device)
            assert chips.dtype == np.int32 and chips.shape[1:] == (4,)
            np.testing.assert_array_equal(chips, focus_chips_cheaper_reference(prob, t, d, k),
                                          err_msg=f"t={t} d={d} k={k}")
            check_cheaper_invariants(chips, prob, t, d, k)

    @settings(max_examples=200, deadline=None)
    @given(h=st.integers(1, 14), w=st.integers(1, 14), data=st.data(),
           d=st.sampled_from([1, 3, 5]), k=st.integers(1, 16))
    def test_edge_cases_match_reference(self, h, w, data, d, k):
        prob = data.draw(hnp.arrays(np.float32, (h, w), elements=st.sampled_from([0.0, 0.0, float(np.float32(0.3)), 1.0])))
        chips = ops.focus_chips(prob, 0.3, d, k, "cheaper")
        np.testing.assert_array_equal(chips, focus_chips_cheaper_reference(prob, 0.3, d, k))
        check_cheaper_invariants(chips, prob, 0.3, d, k)

    @pytest.mark.parametrize("cells_on, shape, k, expected", [
        # the ends of an L: [4, 8) x [4, 8) and [14, 18) x [4, 8) do not touch; a third chip [4, 8) x [14, 18)
        # neither: three chips, as with the paper's rule
        ([(5, 5), (5, 15), (15, 5)], (20, 20), 4, [[4, 4, 8, 8], [14, 4, 18, 8], [4, 14, 8, 18]]),
        # side by side, [4, 8) and [8, 12): their enclosing chip has exactly their 32 cells: merged
        ([(5, 5), (5, 9)], (20, 20), 4, [[4, 4, 12, 8]]),
        # diagonal neighbours [4, 8)^2 and [8, 12)^2 touch at a corner; the enclosing 8 x 8 costs 64 > 32
        # cells: two chips (the paper's rule merges them)
        ([(5, 5), (9, 9)], (20, 20), 4, [[4, 4, 8, 8], [8, 8, 12, 12]]),
        # overlapping by 2 of 4 columns: [4, 8) and [6, 10) enclose 24 cells < 32: merged
        ([(5, 5), (5, 7)], (20, 20), 4, [[4, 4, 10, 8]]),
        # a chain: A [4, 8) x [4, 8), B [6, 10) x [4, 8), C [10, 14) x [6, 10). A+B saves 8 cells (24 < 32);
        # B+C would cost 48 > 32, and [4, 10) x [4, 8) + C 60 > 40: two chips (the paper's rule: one)
        ([(5, 5), (5, 7), (7, 11)], (20, 20), 4, [[4, 4, 10, 8], [10, 6, 14, 10]]),
        # ... and with C level with them ([10, 14) x [4, 8)) the enclosing [4, 14) x [4, 8) costs exactly
        # the 40 cells of the two: merged
        ([(5, 5), (5, 7), (5, 11)], (20, 20), 4, [[4, 4, 14, 8]]),
    ])
    def test_hand_worked(self, cells_on, shape, k, expected):
        chips = ops.focus_chips(TestFocusChips.hot(shape, *cells_on), 0.5, 1, k, "cheaper")
        np.testing.assert_array_equal(chips, np.array(expected, np.int32).reshape(-1, 4))

    def test_touching_is_the_default_and_the_papers_rule(self):
        rng = np.random.default_rng(13)
        for _ in range(100):
            prob = random_focus_map(rng)
            np.testing.assert_array_equal(ops.focus_chips(prob, 0.2, 3, 6), ops.focus_chips(prob, 0.2, 3, 6, "touching"))
            np.testing.assert_array_equal(ops.focus_chips(prob, 0.2, 3, 6), focus_chips_reference(prob, 0.2, 3, 6))

    def test_bad_merge(self):
        prob = np.zeros((5, 6), np.float32)
        for merge in ("Cheaper", "", None, 1):
            with pytest.raises(ValueError, match="^merge:"):
                ops.focus_chips(prob, 0.5, 3, 4, merge)
        with pytest.raises(ValueError, match="^merge: 'cheaper' takes maps of up to 65535"):
            ops.focus_chips(np.zeros((600, 600), np.float32), 0.5, 3, 4, "cheaper")


# ---------------------------------------------------------------------------------------------

def random_crop_case(rng, max_side=24, slot=(24, 32)):
    h, w = (int(v) for v in rng.integers(1, max_side + 1, 2))
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    m = int(rng.integers(1, 5))
    x1, y1 = rng.uniform(-2, w, m), rng.uniform(-2, h, m)
    cw, ch = rng.uniform(2, w + 2, m), rng.uniform(2, h + 2, m)
    chips = np.stack([x1, y1, x1 + cw, y1 + ch], 1).astype(np.float32)
    scales = rng.uniform(0.5, 3, m).astype(np.float32)  # >= 1 output pixel per chip
    # shrink the scale where the resized chip would not fit the slot
    fit = np.minimum(slot[0] / (chips[:, 3] - chips[:, 1]), slot[1] / (chips[:, 2] - chips[:, 0])) * 0.98
    scales = np.minimum(scales, fit).astype(np.float32)
    return image, chips, scales


class TestCropResizeImages:
    @pytest.mark.parametrize("device", DEVICES)
    def test_chips_of_several_images_match_reference(self, device):
        rng = np.random.default_rng(24)
        slot = (24, 32)
        for _ in range(100):
            cases = [random_crop_case(rng, slot=slot) for _ in range(int(rng.integers(1, 4)))]
            index = np.concatenate([np.full(len(c[1]), k) for k, c in enumerate(cases)])
            order = rng.permutation(len(index))  # chips of the images interleaved
            chips = np.concatenate([c[1] for c in cases])[order]
            scales = np.concatenate([c[2] for c in cases])[order]
            index = index[order]
            bgr = bool(rng.random() < 0.7)
            out = from_device(ops.crop_resize_images([on_device(c[0], device) for c in cases], index, chips, scales,
                                                     slot, MEAN, STD, bgr_to_rgb=bgr), device)
            assert out.dtype == np.float32 and out.shape == (len(chips), 3) + slot
            for m in range(len(chips)):
                ref = crop_resize_reference(cases[index[m]][0], chips[m:m + 1], scales[m:m + 1], slot, MEAN, STD, bgr)
                np.testing.assert_allclose(out[m], ref[0], atol=2e-5, rtol=0)

    @pytest.mark.parametrize("device", DEVICES)
    def test_bad_input(self, device):
        image = on_device(np.zeros((10, 12, 3), np.uint8), device)
        chips = np.array([[0, 0, 8, 8]], np.float32)
        with pytest.raises(ValueError, match="index"):
            ops.crop_resize_images([image], [1], chips, [1.0], (16, 16), MEAN, STD)
        with pytest.raises(ValueError, match="chip 0"):
            ops.crop_resize_images([image], [0], chips, [3.0], (16, 16), MEAN, STD)  # 24 px > 16
        with pytest.raises(ValueError, match="chip 0"):
            ops.crop_resize_images([image], [0], chips * np.nan, [1.0], (16, 16), MEAN, STD)
        with pytest.raises(ValueError, match="index, scales"):
            ops.crop_resize_images([image], [0, 0], chips, [1.0], (16, 16), MEAN, STD)
        with pytest.raises(TypeError, match="images"):
            ops.crop_resize_images([], [], np.zeros((0, 4), np.float32), [], (16, 16), MEAN, STD)
        with pytest.raises(TypeError, match="host arrays"):
            ops.crop_resize_images([image], torch.zeros(1, dtype=torch.int64), chips, [1.0], (16, 16), MEAN, STD)
        empty = ops.crop_resize_images([image], np.zeros(0, np.int64), np.zeros((0, 4), np.float32), [], (16, 16),
                                       MEAN, STD)
        assert tuple(empty.shape) == (0, 3, 16, 16)


class TestCropResize:
    @pytest.mark.parametrize("device", DEVICES)
    def test_random_chips_match_reference(self, device):
        rng = np.random.default_rng(14)
        slot = (24, 32)
        for _ in range(CASES_PER_DEVICE):
            image, chips, scales = random_crop_case(rng, slot=slot)
            bgr = bool(rng.random() < 0.7)
            out = from_device(ops.crop_resize(on_device(image, device), on_device(chips, device), on_device(scales, device), slot,
                                               MEAN, STD, bgr_to_rgb=bgr), device)
            assert out.dtype == np.float32 and out.shape == (len(chips), 3) + slot
            np.testing.assert_allclose(out, crop_resize_reference(image, chips, scales, slot, MEAN, STD, bgr),
                                       atol=2e-5, rtol=0)

    def test_matches_cv2_warp_affine(self):
        # OpenCV positions samples on a 1/32-pixel grid: allow half a step times the steepest neighbour
        # difference per axis.
        rng = np.random.default_rng(15)
        for _ in range(100):
            image, chips, scales = random_crop_case(rng, max_side=40, slot=(48, 48))
            steepest = max(np.abs(np.diff(image.astype(float), axis=a)).max(initial=0) for a in (0, 1))
            tol = 2 * steepest / 64 / 255 / min(STD) + 1e-5
            np.testing.assert_allclose(ops.crop_resize(image, chips, scales, (48, 48), MEAN, STD),
                                       crop_resize_warp_affine_reference(image, chips, scales, (48, 48), MEAN, STD),
                                       atol=tol, rtol=0)

    @pytest.mark.parametrize("factor", [0.25, 1 / 3, 0.5, 1.0, 2.0, 3.0])
    def test_whole_image_matches_cv2_resize(self, factor):
        image = np.random.default_rng(16).integers(0, 256, (24, 36, 3)).astype(np.uint8)
        oh, ow = round(24 * factor), round(36 * factor)
        out = ops.crop_resize(image, np.array([[0, 0, 36, 24]], np.float32), factor, (80, 112), MEAN, STD)
        ref = crop_resize_cv2_resize_reference(image, (0, 0, 36, 24), (oh, ow), (80, 112), MEAN, STD)
        np.testing.assert_allclose(out[0], ref, atol=2e-5, rtol=0)

    @pytest.mark.parametrize("factor", [1 / 2, 1 / 3, 1 / 4])
    def test_integer_downscale_crop_matches_cv2_resize(self, factor):
        # integer downscales sample inside the crop only, so cv2.resize of the crop is the same thing
        image = np.random.default_rng(17).integers(0, 256, (50, 60, 3)).astype(np.uint8)
        chip = (12, 6, 48, 42)
        out = ops.crop_resize(image, np.array([chip], np.float32), factor, (20, 20), MEAN, STD, bgr_to_rgb=False)
        ref = crop_resize_cv2_resize_reference(image, chip, (round(36 * factor),) * 2, (20, 20), MEAN, STD, False)
        np.testing.assert_allclose(out[0], ref, atol=2e-5, rtol=0)

    def test_identity_crop_is_normalised_pixels(self):
        image = np.random.default_rng(18).integers(0, 256, (10, 12, 3)).astype(np.uint8)
        out = ops.crop_resize(image, np.array([[2, 3, 9, 8]], np.float32), 1.0, (6, 8), MEAN, STD)
        expected = np.zeros((3, 6, 8))
        expected[:, :5, :7] = ((image[3:8, 2:9, ::-1] / 255.0 - MEAN) / STD).transpose(2, 0, 1)
        np.testing.assert_allclose(out[0], expected, atol=1e-5)
        assert not out[0][:, 5:, :].any() and not out[0][:, :, 7:].any()  # padding is 0

    @pytest.mark.parametrize("device", DEVICES)
    def test_float16(self, device):
        rng = np.random.default_rng(19)
        image, chips, scales = random_crop_case(rng, slot=(24, 32))
        out = from_device(ops.crop_resize(on_device(image, device), chips, scales, (24, 32), MEAN, STD, dtype="float16"), device)
        assert out.dtype == np.float16
        np.testing.assert_allclose(out, crop_resize_reference(image, chips, scales, (24, 32), MEAN, STD), atol=1e-2)

    @pytest.mark.parametrize("device", DEVICES)
    def test_empty_chips(self, device):
        image = np.zeros((10, 10, 3), np.uint8)
        out = from_device(ops.crop_resize(on_device(image, device), np.zeros((0, 4), np.float32), 1.0, (8, 8), MEAN, STD), device)
        assert out.shape == (0, 3, 8, 8) and out.dtype == np.float32

    def test_bad_input(self):
        image = np.zeros((10, 10, 3), np.uint8)
        chips = np.array([[0, 0, 5, 5]], np.float32)
        with pytest.raises(ValueError, match="^chips:"):
            ops.crop_resize(image, chips, 2.0, (8, 8), MEAN, STD)  # 10 x 10 does not fit 8 x 8
        with pytest.raises(ValueError, match="^chips:"):
            ops.crop_resize(image, np.array([[5, 0, 5, 5]], np.float32), 1.0, (8, 8), MEAN, STD)
        with pytest.raises(ValueError, match="^chips"):
            ops.crop_resize(image, np.array([[0, 0, np.nan, 5]], np.float32), 1.0, (8, 8), MEAN, STD)
        with pytest.raises(ValueError, match="^chips:"):
            ops.crop_resize(image, chips[:, :3], 1.0, (8, 8), MEAN, STD)
        with pytest.raises(ValueError, match="^scales:"):
            ops.crop_resize(image, chips, [1.0, 1.0], (8, 8), MEAN, STD)
        with pytest.raises(ValueError, match="scales"):
            ops.crop_resize(image, chips, -1.0, (8, 8), MEAN, STD)
        with pytest.raises(TypeError, match="^image:"):
            ops.crop_resize(image.astype(np.float32), chips, 1.0, (8, 8), MEAN, STD)
        with pytest.raises(ValueError, match="^image:"):
            ops.crop_resize(image[..., :2], chips, 1.0, (8, 8), MEAN, STD)
        with pytest.raises(ValueError, match="^image:"):
            ops.crop_resize(np.zeros((0, 10, 3), np.uint8), chips, 1.0, (8, 8), MEAN, STD)
        with pytest.raises(ValueError, match="^out_hw:"):
            ops.crop_resize(image, chips, 1.0, (8, 0), MEAN, STD)
        with pytest.raises(ValueError, match="^out_hw:"):
            ops.crop_resize(image, chips, 1.0, 8, MEAN, STD)
        with pytest.raises(ValueError, match="^std:"):
            ops.crop_resize(image, chips, 1.0, (8, 8), MEAN, (0.2, 0.0, 0.2))
        with pytest.raises(ValueError, match="^mean:"):
            ops.crop_resize(image, chips, 1.0, (8, 8), (0.5, 0.5), STD)
        with pytest.raises(TypeError, match="^scales:"):
            ops.crop_resize(image, chips, "2", (8, 8), MEAN, STD)
        with pytest.raises(ValueError, match="^dtype:"):
            ops.crop_resize(image, chips, 1.0, (8, 8), MEAN, STD, dtype="int8")

    @needs_cuda
    @pytest.mark.cuda
    def test_cuda_matches_cpu(self):
        rng = np.random.default_rng(20)
        for _ in range(200):
            image, chips, scales = random_crop_case(rng, max_side=200, slot=(128, 160))
            for dtype, tol in (("float32", 1e-4), ("float16", 1e-2)):
                gpu = ops.crop_resize(torch.from_numpy(image).cuda(), torch.from_numpy(chips).cuda(),
                                      torch.from_numpy(scales).cuda(), (128, 160), MEAN, STD, dtype=dtype)
                cpu = ops.crop_resize(image, chips, scales, (128, 160), MEAN, STD, dtype=dtype)
                np.testing.assert_allclose(gpu.float().cpu().numpy(), cpu.astype(np.float32), atol=tol, rtol=0)


# ---------------------------------------------------------------------------------------------

class TestPaintBoxes:
    @pytest.mark.parametrize("device", DEVICES)
    def test_random_boxes_match_the_cell_overlap_reference(self, device):
        rng = np.random.default_rng(7)
        for _ in range(300):
            b, h, w = int(rng.integers(1, 4)), int(rng.integers(0, 9)), int(rng.integers(0, 9))
            stride = float(rng.choice([8, 16, 12.5]))
            maps = (rng.random((b, h, w)) * (rng.random((b, h, w)) < 0.3)).astype(np.float32)
            n = int(rng.integers(0, 12))
            xy = rng.uniform(-40, w * stride + 20, (n, 2))
            # Some sides land exactly on cell borders, some boxes are empty.
            wh = np.where(rng.random((n, 2)) < 0.2, rng.integers(0, 3, (n, 2)) * stride, rng.uniform(0, 70, (n, 2)))
            xy = np.where(rng.random((n, 2)) < 0.3, np.round(xy / stride) * stride, xy)
            boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
            index = rng.integers(0, b, n).astype(np.int64)
            keep = rng.random(n) < 0.7 if rng.random() < 0.5 else None
            out = from_device(ops.paint_boxes(on_device(maps, device), on_device(boxes, device),
                                              on_device(index, device), stride, on_device(keep, device)), device)
            np.testing.assert_array_equal(out, paint_boxes_reference(maps, boxes, index, stride, keep),
                                          err_msg=f"stride {stride}\n{boxes}\n{index}\n{keep}")

    def test_hand_worked_case(self):
        maps = np.full((2, 3, 4), 0.25, np.float32)
        boxes = np.array([[0, 0, 16, 16],        # exactly cell (0, 0)
                          [17, 20, 33, 21],      # x: cells 1..2, y: cell 1
                          [40, 40, 40, 60],      # zero width: nothing
                          [-30, 40, 5, 100]],    # clipped: column 0, rows 2.. (map 1)
                         np.float32)
        out = ops.paint_boxes(maps, boxes, np.array([0, 0, 0, 1]), 16)
        want = maps.copy()
        want[0, 0, 0] = 1
        want[0, 1, 1:3] = 1
        want[1, 2:, 0] = 1
        np.testing.assert_array_equal(out, want)
        assert (maps == 0.25).all()  # the input is not painted in place

    def test_no_boxes_leave_the_maps_as_they_are(self):
        maps = np.random.default_rng(0).random((2, 5, 6)).astype(np.float32)
        out = ops.paint_boxes(maps, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 16)
        np.testing.assert_array_equal(out, maps)

    def test_bad_input_is_refused(self):
        maps = np.zeros((2, 3, 3), np.float32)
        box = np.array([[0, 0, 10, 10]], np.float32)
        with pytest.raises(ValueError, match="index"):
            ops.paint_boxes(maps, box, np.array([2]), 16)
        with pytest.raises(ValueError, match="index"):
            ops.paint_boxes(maps, box, np.array([0, 1]), 16)
        with pytest.raises(ValueError, match="keep"):
            ops.paint_boxes(maps, box, np.array([0]), 16, keep=np.array([True, False]))
        with pytest.raises(ValueError, match="NaN"):
            ops.paint_boxes(maps, np.array([[0, 0, np.nan, 10]], np.float32), np.array([0]), 16)
        with pytest.raises(ValueError, match="x2 >= x1"):
            ops.paint_boxes(maps, np.array([[10, 0, 0, 10]], np.float32), np.array([0]), 16)
        with pytest.raises(TypeError, match="maps"):
            ops.paint_boxes(maps.astype(np.float64), box, np.array([0]), 16)
        with pytest.raises(ValueError, match="stride"):
            ops.paint_boxes(maps, box, np.array([0]), 0)
