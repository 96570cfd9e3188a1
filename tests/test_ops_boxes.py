"""Box ops (runtime.ops.decode, nms, soft_nms, stack_prune, top_k) against the float64 references in
tests/reference.py, on every device (NumPy, CPU tensors, CUDA tensors), plus bad and empty input."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEVICES, from_device, needs_cuda, on_device
from reference import (_iou_matrix64, decode_reference, nms_reference, soft_nms_reference,
                       stack_prune_reference, top_k_reference)
from runtime import ops

RANDOM_CASES = 1000  # per device; numpy + cpu make >= 2,000 random cases per op
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- helpers -------------------------------------------------------------------------------------



def random_boxes(rng, n, extent=100.0, max_size=40.0, clusters=None):
    """float32 boxes; with clusters, centred on a few points so that many overlap."""
    if clusters:
        centres = rng.uniform(0, extent, (clusters, 2))[rng.integers(0, clusters, n)]
        xy = centres + rng.normal(0, max_size / 6, (n, 2))
    else:
        xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(0, max_size, (n, 2))
    return np.concatenate([xy - wh / 2, xy + wh / 2], 1).astype(np.float32)


def random_scores(rng, n, ties=False):
    s = rng.uniform(0, 1, n)
    if ties:  # few distinct values: many exact ties
        s = np.round(s * 4) / 4
    return s.astype(np.float32)


def near_iou_threshold(boxes, threshold, eps=1e-5):
    """True when some pair's IoU is within eps of the threshold (float32 and float64 may disagree)."""
    if len(boxes) < 2:
        return False
    iou = _iou_matrix64(boxes)
    np.fill_diagonal(iou, -1)
    return bool((np.abs(iou - threshold) < eps).any())


def compare_soft_nms(keep, scores, ref_keep, ref_scores, score_threshold, tol=2e-5):
    """Tie-tolerant comparison of two Soft-NMS runs. Returns False when they agree exactly (same indices,
    scores within tol), True when they part at a near-tie (the two picks' current scores within tol of each
    other, or one within tol of score_threshold, where float32 and float64 may legitimately differ);
    fails otherwise. Scores are compared up to the parting point."""
    m = min(len(keep), len(ref_keep))
    differ = np.nonzero(keep[:m] != ref_keep[:m])[0]
    p = int(differ[0]) if len(differ) else m
    np.testing.assert_allclose(scores[:p], ref_scores[:p], rtol=tol, atol=1e-7)
    if p == m and len(keep) == len(ref_keep):
        return False
    near = lambda a, b: abs(a - b) <= tol * max(abs(a), abs(b), 1e-3)
    a = scores[p] if p < len(keep) else None
    b = ref_scores[p] if p < len(ref_keep) else None
    ok = (a is not None and b is not None and near(a, b)) or any(
        v is not None and near(v, score_threshold) for v in (a, b))
    assert ok, f"soft_nms parts from the reference at {p}: {keep[p:p + 3]} {a} vs {ref_keep[p:p + 3]} {b}"
    return True


# ---- decode --------------------------------------------------------------------------------------

class TestDecode:
    def check(self, device, scores, ltrb, padded=False, **kw):
        kw_dev = {k: on_device(v, device) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        out = ops.decode(on_device(scores, device), on_device(ltrb, device), padded=padded, **kw_dev)
        out = [from_device(o, device) for o in out]
        ref = decode_reference(scores, ltrb, **kw)
        if padded:
            # cap rows (N * min(max_candidates, C*h*w)): the unpadded rows first, zeros after, and a mask
            n, c, h, w = scores.shape
            cap, k = n * min(kw.get("max_candidates", 1000), c * h * w), len(ref[1])
            *out, valid = out
            assert valid.dtype == np.bool_ and valid.shape == (cap,)
            np.testing.assert_array_equal(valid, np.arange(cap) < k)
            assert [o.shape[0] for o in out] == [cap] * 4
            assert all((o[k:] == 0).all() for o in out)
            out = [o[:k] for o in out]
        boxes, sc, labels, batch = out
        assert boxes.dtype == np.float32 and sc.dtype == np.float32
        assert labels.dtype == np.int32 and batch.dtype == np.int32
        np.testing.assert_array_equal(batch, ref[3])
        np.testing.assert_array_equal(labels, ref[2])
        np.testing.assert_array_equal(sc, ref[1])  # exact: the same float32 scores, the same order
        np.testing.assert_allclose(boxes, ref[0], rtol=1e-5, atol=1e-3)
        return len(sc)

    @pytest.mark.parametrize("padded", [False, True])
    @pytest.mark.parametrize("device", DEVICES)
    def test_random(self, device, padded):
        rng = np.random.default_rng(1)
        total = 0
        for case in range(RANDOM_CASES):
            n, c, h, w = rng.integers(0, 3), rng.integers(1, 4), rng.integers(1, 6), rng.integers(1, 6)
            scores = rng.uniform(0, 1, (n, c, h, w))
            if case % 3 == 0:
                scores = np.round(scores * 8) / 8  # ties, and scores exactly at the threshold
            scores = scores.astype(np.float32)
            ltrb = rng.uniform(0, 30, (n, 4, h, w)).astype(np.float32)
            kw = dict(stride=float(rng.choice([4, 8, 16])), score_threshold=float(rng.choice([0.05, 0.25, 0.5])),
                      max_candidates=int(rng.integers(0, 40)))
            if case % 2:
                kw["scales"] = rng.uniform(0.3, 3, n).astype(np.float32)
                kw["offsets"] = rng.uniform(0, 500, (n, 2)).astype(np.float32)
            total += self.check(device, scores, ltrb, padded, **kw)
        assert total > 5_000  # the cases exercise real output

    @pytest.mark.parametrize("device", DEVICES)
    def test_hand_worked(self, device):
        scores = np.zeros((1, 2, 2, 3), np.float32)
        scores[0, 1, 1, 2] = 0.9  # class 1 at cell (y=1, x=2): centre (20, 12) at stride 8
        scores[0, 0, 0, 0] = 0.9  # same score, smaller flat index: first
        scores[0, 0, 1, 1] = 0.25  # at the threshold: not a candidate (strictly greater)
        scores[0, 1, 0, 0] = 0.2  # below
        ltrb = np.ones((1, 4, 2, 3), np.float32)
        ltrb[0, :, 1, 2] = [4, 2, 6, 8]
        out = ops.decode(on_device(scores, device), on_device(ltrb, device), score_threshold=0.25,
                         scales=on_device(np.array([2], np.float32), device),
                         offsets=on_device(np.array([[100, 50]], np.float32), device))
        boxes, sc, labels, batch = (from_device(o, device) for o in out)
        np.testing.assert_array_equal(labels, [0, 1])
        np.testing.assert_array_equal(batch, [0, 0])
        np.testing.assert_allclose(sc, [0.9, 0.9])
        # cell (0,0): centre (4, 4), box [3, 3, 5, 5] / 2 + (100, 50)
        np.testing.assert_allclose(boxes[0], [101.5, 51.5, 102.5, 52.5])
        np.testing.assert_allclose(boxes[1], [(20 - 4) / 2 + 100, (12 - 2) / 2 + 50, (20 + 6) / 2 + 100, (12 + 8) / 2 + 50])

    @pytest.mark.parametrize("device", DEVICES)
    def test_max_candidates_per_image(self, device):
        rng = np.random.default_rng(2)
        scores = rng.uniform(0.1, 1, (3, 2, 8, 8)).astype(np.float32)
        ltrb = rng.uniform(0, 5, (3, 4, 8, 8)).astype(np.float32)
        _, sc, _, batch = (from_device(o, device) for o in ops.decode(on_device(scores, device), on_device(ltrb, device),
                                                              max_candidates=5))
        np.testing.assert_array_equal(batch, np.repeat([0, 1, 2], 5))
        for i in range(3):
            np.testing.assert_array_equal(sc[batch == i], np.sort(scores[i].ravel())[::-1][:5])

    @pytest.mark.parametrize("device", DEVICES)
    def test_empty(self, device):
        for shape in [(0, 3, 4, 4), (2, 3, 0, 4)]:
            scores = np.zeros(shape, np.float32)
            ltrb = np.zeros((shape[0], 4) + shape[2:], np.float32)
            boxes, sc, labels, batch = (from_device(o, device) for o in ops.decode(on_device(scores, device), on_device(ltrb, device)))
            assert boxes.shape == (0, 4) and sc.shape == labels.shape == batch.shape == (0,)
            assert labels.dtype == np.int32 and batch.dtype == np.int32 and boxes.dtype == np.float32

    def test_bad_input(self):
        s = np.zeros((1, 2, 3, 3), np.float32)
        l = np.zeros((1, 4, 3, 3), np.float32)
        with pytest.raises(ValueError, match="ltrb"):
            ops.decode(s, np.zeros((1, 4, 3, 4), np.float32))
        with pytest.raises(ValueError, match="scores"):
            ops.decode(s[0], l)
        with pytest.raises(TypeError, match="scores"):
            ops.decode(s.astype(np.float64), l)
        with pytest.raises(ValueError, match="scales"):
            ops.decode(s, l, scales=np.ones(2, np.float32))
        with pytest.raises(ValueError, match="offsets"):
            ops.decode(s, l, offsets=np.zeros((2, 2), np.float32))
        bad = s.copy()
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(ValueError, match="scores"):
            ops.decode(bad, l)
        with pytest.raises(ValueError, match="max_candidates"):
            ops.decode(s, l, max_candidates=-1)
        with pytest.raises(ValueError, match="stride"):
            ops.decode(s, l, stride=0)


# ---- nms -----------------------------------------------------------------------------------------

class TestNMS:
    @pytest.mark.parametrize("device", DEVICES)
    def test_random(self, device):
        rng = np.random.default_rng(3)
        skipped = kept = 0
        for case in range(RANDOM_CASES):
            n = int(rng.integers(0, 40))
            boxes = random_boxes(rng, n, clusters=int(rng.integers(1, 5)) if case % 2 else None)
            scores = random_scores(rng, n, ties=case % 3 == 0)
            labels = rng.integers(0, 3, n).astype(np.int32 if case % 2 else np.int64) if case % 4 < 2 else None
            thr = float(rng.uniform(0.05, 0.9))
            if near_iou_threshold(boxes, thr):
                skipped += 1
                continue
            keep = from_device(ops.nms(on_device(boxes, device), on_device(scores, device), thr, labels=on_device(labels, device)), device)
            assert keep.dtype == np.int64
            np.testing.assert_array_equal(keep, nms_reference(boxes, scores, thr, labels))
            kept += len(keep)
        assert skipped < RANDOM_CASES // 50 and kept > 5_000

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
    def test_just_over_and_under_threshold(self, device, threshold):
        # B inside A: IoU = area(B) / area(A) = h / 10.
        for delta, suppressed in [(1e-3, True), (-1e-3, False)]:
            h = 10 * (threshold + delta)
            boxes = np.array([[0, 0, 10, 10], [0, 0, 10, h]], np.float32)
            keep = from_device(ops.nms(on_device(boxes, device), on_device(np.array([0.9, 0.8], np.float32), device), threshold), device)
            np.testing.assert_array_equal(keep, [0] if suppressed else [0, 1])

    @pytest.mark.parametrize("device", DEVICES)
    def test_many_overlapping_ties_labels(self, device):
        rng = np.random.default_rng(4)
        boxes = random_boxes(rng, 2000, extent=200, max_size=60, clusters=8)
        scores = random_scores(rng, 2000, ties=True)
        for labels in [None, np.zeros(2000, np.int64), np.arange(2000, dtype=np.int32),
                       rng.integers(0, 5, 2000).astype(np.int32)]:
            keep = from_device(ops.nms(on_device(boxes, device), on_device(scores, device), 0.5, labels=on_device(labels, device)), device)
            if labels is not None and len(np.unique(labels)) == 2000:  # all distinct: nothing suppressed
                np.testing.assert_array_equal(keep, top_k_reference(scores, 2000))
            elif not near_iou_threshold(boxes, 0.5):
                np.testing.assert_array_equal(keep, nms_reference(boxes, scores, 0.5, labels))

    @given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 6), st.integers(0, 6),
                              st.sampled_from([0.1, 0.5, 0.9]), st.integers(0, 1)), max_size=30),
           st.sampled_from([0.0, 0.2, 0.5, 0.99]))
    @HYP
    def test_property_grid_boxes(self, rows, thr):
        # integer boxes (zero-area ones included), tied scores, two labels
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _, _ in rows], np.float32).reshape(-1, 4)
        scores = np.array([r[4] for r in rows], np.float32)
        labels = np.array([r[5] for r in rows], np.int64)
        if near_iou_threshold(boxes, thr, 1e-6):
            return
        for lab in (None, labels):
            np.testing.assert_array_equal(ops.nms(boxes, scores, thr, labels=lab), nms_reference(boxes, scores, thr, lab))

    def test_torch_in_torch_out_and_empty(self):
        keep = ops.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5)
        assert isinstance(keep, torch.Tensor) and keep.dtype == torch.int64 and keep.shape == (0,)
        keep = ops.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
        assert isinstance(keep, np.ndarray) and keep.dtype == np.int64 and keep.shape == (0,)

    def test_bad_input(self):
        b = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
        s = np.array([0.5, 0.4], np.float32)
        with pytest.raises(ValueError, match="boxes"):
            ops.nms(b[:, :3], s, 0.5)
        with pytest.raises(ValueError, match="boxes"):
            ops.nms(b[:, [2, 1, 0, 3]], s, 0.5)  # x2 < x1
        with pytest.raises(ValueError, match="scores"):
            ops.nms(b, s[:1], 0.5)
        with pytest.raises(TypeError, match="boxes"):
            ops.nms(b.astype(np.float64), s, 0.5)
        with pytest.raises(ValueError, match="scores"):
            ops.nms(b, np.array([np.nan, 1], np.float32), 0.5)
        with pytest.raises(ValueError, match="boxes"):
            ops.nms(np.array([[0, 0, np.inf, 1], [0, 0, 1, 1]], np.float32), s, 0.5)
        with pytest.raises(ValueError, match="iou_threshold"):
            ops.nms(b, s, -0.1)
        with pytest.raises(TypeError, match="labels"):
            ops.nms(b, s, 0.5, labels=np.zeros(2, np.float32))
        with pytest.raises(ValueError, match="labels"):
            ops.nms(b, s, 0.5, labels=np.zeros(3, np.int64))


# ---- soft_nms ------------------------------------------------------------------------------------

class TestSoftNMS:
    @pytest.mark.parametrize("device", DEVICES)
    def test_random(self, device):
        rng = np.random.default_rng(5)
        parted = 0
        for case in range(RANDOM_CASES):
            n = int(rng.integers(0, 40))
            boxes = random_boxes(rng, n, clusters=int(rng.integers(1, 5)) if case % 2 else None)
            scores = random_scores(rng, n, ties=case % 5 == 0)
            labels = rng.integers(0, 3, n).astype(np.int32) if case % 3 == 0 else None
            method = ("gaussian", "linear", "hard")[case % 3]
            kw = dict(method=method, sigma=float(rng.choice([0.55, 0.3, 1.0])),
                      iou_threshold=float(rng.uniform(0.1, 0.7)), score_threshold=float(rng.choice([0.001, 0.1, 0.3])))
            if method != "gaussian" and near_iou_threshold(boxes, kw["iou_threshold"]):
                continue
            keep, sc = ops.soft_nms(on_device(boxes, device), on_device(scores, device), labels=on_device(labels, device), **kw)
            keep, sc = from_device(keep, device), from_device(sc, device)
            assert keep.dtype == np.int64 and sc.dtype == np.float32
            ref_keep, ref_sc = soft_nms_reference(boxes, scores, labels, **kw)
            parted += compare_soft_nms(keep, sc, ref_keep, ref_sc, kw["score_threshold"])
        assert parted < RANDOM_CASES // 100

    @pytest.mark.parametrize("device", DEVICES)
    def test_hand_worked(self, device):
        # A = [0,0,10,10] (0.9), B = [0,0,10,5] (0.8, IoU 0.5 with A), C far away (0.7).
        boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 60, 60]], np.float32)
        scores = np.array([0.9, 0.8, 0.7], np.float32)
        b, s = on_device(boxes, device), on_device(scores, device)
        keep, sc = (from_device(o, device) for o in ops.soft_nms(b, s))
        w = math.exp(-0.25 / 0.55)  # 0.634..: B decays to 0.507, below C
        np.testing.assert_array_equal(keep, [0, 2, 1])
        np.testing.assert_allclose(sc, [0.9, 0.7, 0.8 * w], rtol=1e-6)
        keep, sc = (from_device(o, device) for o in ops.soft_nms(b, s, method="linear", iou_threshold=0.4))
        np.testing.assert_array_equal(keep, [0, 2, 1])
        np.testing.assert_allclose(sc, [0.9, 0.7, 0.4], rtol=1e-6)
        keep, sc = (from_device(o, device) for o in ops.soft_nms(b, s, method="linear", iou_threshold=0.5))
        np.testing.assert_array_equal(keep, [0, 1, 2])  # IoU 0.5 is not > 0.5: no decay
        keep, sc = (from_device(o, device) for o in ops.soft_nms(b, s, method="hard", iou_threshold=0.4))
        np.testing.assert_array_equal(keep, [0, 2])
        keep, sc = (from_device(o, device) for o in ops.soft_nms(b, s, labels=on_device(np.array([0, 1, 0], np.int32), device)))
        np.testing.assert_array_equal(keep, [0, 1, 2])  # different labels never decay each other
        keep, sc = (from_device(o, device) for o in ops.soft_nms(b, s, score_threshold=0.75))
        np.testing.assert_array_equal(keep, [0, 1][:1])  # C below originally, B decays below

    @pytest.mark.parametrize("device", DEVICES)
    def test_many_overlapping_and_max_output(self, device):
        rng = np.random.default_rng(6)
        boxes = random_boxes(rng, 2000, extent=300, max_size=60, clusters=20)
        scores = random_scores(rng, 2000)
        keep, sc = (from_device(o, device) for o in ops.soft_nms(on_device(boxes, device), on_device(scores, device)))
        ref_keep, ref_sc = soft_nms_reference(boxes, scores)
        compare_soft_nms(keep, sc, ref_keep, ref_sc, 0.001)
        assert len(keep) > 100
        for limit in (0, 1, 50):
            k2, s2 = (from_device(o, device) for o in ops.soft_nms(on_device(boxes, device), on_device(scores, device), max_output=limit))
            np.testing.assert_array_equal(k2, keep[:limit])
            np.testing.assert_array_equal(s2, sc[:limit])

    @given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 5), st.integers(0, 5),
                              st.sampled_from([0.05, 0.3, 0.6, 0.9]), st.integers(0, 1)), max_size=25),
           st.sampled_from(["gaussian", "linear", "hard"]), st.booleans())
    @HYP
    def test_property_grid_boxes(self, rows, method, with_labels):
        # zero-area boxes, exact score ties, equal boxes, two labels
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _, _ in rows], np.float32).reshape(-1, 4)
        scores = np.array([r[4] for r in rows], np.float32)
        labels = np.array([r[5] for r in rows], np.int64) if with_labels else None
        if method != "gaussian" and near_iou_threshold(boxes, 0.3, 1e-6):
            return
        keep, sc = ops.soft_nms(boxes, scores, labels=labels, method=method)
        ref_keep, ref_sc = soft_nms_reference(boxes, scores, labels, method=method)
        compare_soft_nms(keep, sc, ref_keep, ref_sc, 0.001)
        assert len(set(keep.tolist())) == len(keep)

    def test_torch_in_torch_out_and_empty(self):
        keep, sc = ops.soft_nms(torch.zeros((0, 4)), torch.zeros(0))
        assert isinstance(keep, torch.Tensor) and keep.dtype == torch.int64 and keep.shape == (0,)
        assert isinstance(sc, torch.Tensor) and sc.dtype == torch.float32 and sc.shape == (0,)
        keep, sc = ops.soft_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
        assert keep.dtype == np.int64 and sc.dtype == np.float32 and keep.shape == sc.shape == (0,)

    def test_bad_input(self):
        b = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
        s = np.array([0.5, 0.4], np.float32)
        with pytest.raises(ValueError, match="method"):
            ops.soft_nms(b, s, method="cubic")
        with pytest.raises(ValueError, match="sigma"):
            ops.soft_nms(b, s, sigma=0)
        with pytest.raises(ValueError, match="iou_threshold"):
            ops.soft_nms(b, s, iou_threshold=-1)
        with pytest.raises(ValueError, match="max_output"):
            ops.soft_nms(b, s, max_output=-1)
        with pytest.raises(ValueError, match="boxes"):
            ops.soft_nms(b[:, [0, 3, 2, 1]], s)  # y2 < y1
        with pytest.raises(ValueError, match="scores"):
            ops.soft_nms(b, np.array([0.5, np.inf], np.float32))
        with pytest.raises(ValueError, match="labels"):
            ops.soft_nms(b, s, labels=np.zeros((2, 1), np.int32))


class TestSoftNMSSegments:
    """soft_nms_segments against soft_nms_reference run on each segment on its own."""

    @staticmethod
    def reference(boxes, scores, offsets, labels, **kw):
        keep, out, counts = np.full(len(scores), -1, np.int64), np.zeros(len(scores), np.float32), []
        for s in range(len(offsets) - 1):
            a, b = offsets[s], offsets[s + 1]
            k, sc = soft_nms_reference(boxes[a:b], scores[a:b], None if labels is None else labels[a:b], **kw)
            keep[a:a + len(k)], out[a:a + len(k)] = np.asarray(k) + a, sc
            counts.append(len(k))
        return keep, out, np.array(counts, np.int64)

    @pytest.mark.parametrize("device", DEVICES)
    def test_random_segments(self, device):
        rng = np.random.default_rng(15)
        parted = 0
        for case in range(150):
            sizes = rng.integers(0, 30, int(rng.integers(1, 7)))
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            n = int(offsets[-1])
            boxes = random_boxes(rng, n, clusters=3)
            scores = random_scores(rng, n, ties=case % 4 == 0)
            labels = rng.integers(0, 3, n).astype(np.int64) if case % 2 else None
            kw = dict(method="gaussian", sigma=0.55, score_threshold=float(rng.choice([0.001, 0.2])),
                      max_output=None if case % 3 == 0 else int(rng.integers(0, 12)))
            keep, sc, counts = (from_device(o, device) for o in ops.soft_nms_segments(
                on_device(boxes, device), on_device(scores, device), on_device(offsets, device),
                labels=on_device(labels, device), **kw))
            assert keep.dtype == np.int64 and sc.dtype == np.float32 and counts.shape == (len(sizes),)
            ref_keep, ref_sc, ref_counts = self.reference(boxes, scores, offsets, labels, **kw)
            for s in range(len(sizes)):
                a = offsets[s]
                parted += compare_soft_nms(keep[a:a + counts[s]], sc[a:a + counts[s]],
                                           ref_keep[a:a + ref_counts[s]], ref_sc[a:a + ref_counts[s]],
                                           kw["score_threshold"])
                # unused slots: -1 and 0
                assert (keep[a + counts[s]:offsets[s + 1]] == -1).all() and (sc[a + counts[s]:offsets[s + 1]] == 0).all()
        assert parted < 3

    @pytest.mark.parametrize("device", DEVICES)
    def test_hand_worked(self, device):
        # Two segments holding the same three boxes: each decays only within itself.
        boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 60, 60]] * 2, np.float32)
        scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.1], np.float32)
        offsets = np.array([0, 3, 6, 6], np.int64)  # and an empty third segment
        keep, sc, counts = (from_device(o, device) for o in ops.soft_nms_segments(
            on_device(boxes, device), on_device(scores, device), on_device(offsets, device)))
        w = math.exp(-0.25 / 0.55)
        np.testing.assert_array_equal(counts, [3, 3, 0])
        np.testing.assert_array_equal(keep, [0, 2, 1, 4, 3, 5])
        np.testing.assert_allclose(sc, [0.9, 0.7, 0.8 * w, 0.95, 0.6 * w, 0.1], rtol=1e-6)
        keep, sc, counts = (from_device(o, device) for o in ops.soft_nms_segments(
            on_device(boxes, device), on_device(scores, device), on_device(offsets, device), max_output=1))
        np.testing.assert_array_equal(counts, [1, 1, 0])
        np.testing.assert_array_equal(keep, [0, -1, -1, 4, -1, -1])
        # boxes beyond the last offset are in no segment
        keep, sc, counts = (from_device(o, device) for o in ops.soft_nms_segments(
            on_device(boxes, device), on_device(scores, device), on_device(offsets[:2], device)))
        np.testing.assert_array_equal(counts, [3])
        np.testing.assert_array_equal(keep, [0, 2, 1, -1, -1, -1])
        np.testing.assert_array_equal(sc[3:], 0)

    def test_bad_offsets(self):
        b = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
        s = np.array([0.5, 0.4], np.float32)
        for offsets in ([0, 3], [1, 2], [0, 2, 1, 2], []):
            with pytest.raises(ValueError, match="offsets"):
                ops.soft_nms_segments(b, s, np.array(offsets, np.int64))
        with pytest.raises(TypeError, match="offsets"):
            ops.soft_nms_segments(b, s, np.array([0, 2], np.int32))  # dtype
        with pytest.raises(ValueError, match="scores"):
            ops.soft_nms_segments(b, np.array([0.5, np.nan], np.float32), np.array([0, 2], np.int64))


# ---- stack_prune ---------------------------------------------------------------------------------

class TestStackPrune:
    @pytest.mark.parametrize("device", DEVICES)
    def test_random(self, device):
        rng = np.random.default_rng(7)
        kept = 0
        for case in range(RANDOM_CASES):
            n = int(rng.integers(0, 30))
            height, width = int(rng.integers(50, 300)), int(rng.integers(50, 300))
            # integer-ish coordinates so that many sides fall exactly on chip and image sides
            chips = rng.integers(-20, 320, (n if case % 2 else 1, 2)).astype(np.float32)
            chips = np.concatenate([chips, chips + rng.integers(1, 200, chips.shape)], 1).astype(np.float32)
            xy = rng.integers(-30, 330, (n, 2)).astype(np.float32)
            boxes = np.concatenate([xy, xy + rng.integers(0, 120, (n, 2))], 1).astype(np.float32)
            if case % 3 == 0:
                boxes += rng.choice([0, 0.5, -1e-3], boxes.shape).astype(np.float32)
                boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
            chip = chips[0] if case % 2 == 0 else chips
            valid = None if case % 4 == 0 else (float(rng.choice([0, 10, 30])), float(rng.choice([40, 80, np.inf])))
            keep = from_device(ops.stack_prune(on_device(boxes, device), on_device(chip, device), (height, width), valid), device)
            assert keep.dtype == np.bool_ and keep.shape == (n,)
            np.testing.assert_array_equal(keep, stack_prune_reference(boxes, chip, (height, width), valid))
            kept += int(keep.sum())
        assert kept > 200

    @pytest.mark.parametrize("device", DEVICES)
    def test_each_side_on_inside_outside(self, device):
        # chip [100, 100, 200, 200] inside a 400 x 300 (height x width) image; a 20 x 20 box moved so that
        # one side lies exactly on, just inside (+/- 1e-3) or just across the matching chip side.
        chip = np.array([100, 100, 200, 200], np.float32)
        base = np.array([140, 140, 160, 160], np.float32)
        eps = np.float32(1e-3)
        boxes, expected = [], []
        for side in range(4):
            edge = chip[side]
            inward = 1 if side < 2 else -1
            for shift, kept in [(0, False), (inward * eps, True), (-inward * eps, False)]:
                b = base.copy()
                b[side] = edge + shift
                boxes.append(b)
                expected.append(kept)
        boxes = np.array(boxes, np.float32)
        keep = from_device(ops.stack_prune(on_device(boxes, device), on_device(chip, device), (400, 300)), device)
        np.testing.assert_array_equal(keep, expected)
        np.testing.assert_array_equal(keep, stack_prune_reference(boxes, chip, (400, 300)))
        # the same chip sides as image borders: a chip covering the whole image keeps all of them
        keep = from_device(ops.stack_prune(on_device(boxes, device), on_device(np.array([0, 0, 300, 400], np.float32), device),
                                   (400, 300)), device)
        assert keep.all()

    @pytest.mark.parametrize("device", DEVICES)
    def test_image_border_sides_and_valid_range(self, device):
        # chip touching the left and top image border only (image 100 x 100)
        chip = np.array([0, 0, 50, 50], np.float32)
        boxes = np.array([
            [0, 0, 10, 10],      # on the left and top chip sides = image border: kept
            [-5, -5, 10, 10],    # crosses the border, clipped onto it: kept
            [40, 40, 50, 49],    # on the right chip side (not image border): dropped
            [40, 40, 49, 55],    # crosses the bottom chip side: dropped
            [60, 60, 70, 70],    # outside the chip: dropped
            [10, 10, 10, 20],    # zero width: dropped
        ], np.float32)
        keep = from_device(ops.stack_prune(on_device(boxes, device), on_device(chip, device), (100, 100)), device)
        np.testing.assert_array_equal(keep, [True, True, False, False, False, False])
        # valid range on sqrt(area) of the unclipped box, both ends inclusive: sizes 10 and 15
        keep = from_device(ops.stack_prune(on_device(boxes[:2], device), on_device(chip, device), (100, 100), (10, 15)), device)
        np.testing.assert_array_equal(keep, [True, True])
        keep = from_device(ops.stack_prune(on_device(boxes[:2], device), on_device(chip, device), (100, 100), (10.001, np.inf)), device)
        np.testing.assert_array_equal(keep, [False, True])
        keep = from_device(ops.stack_prune(on_device(boxes[:2], device), on_device(chip, device), (100, 100), (0, 14.999)), device)
        np.testing.assert_array_equal(keep, [True, False])

    @pytest.mark.parametrize("device", DEVICES)
    def test_per_box_image_sizes(self, device):
        # Boxes of several images in one call: each against the reference with its own image size.
        rng = np.random.default_rng(17)
        n = 400
        sizes = rng.integers(40, 200, (3, 2)).astype(np.float32)
        owner = rng.integers(0, 3, n)
        image_hw = sizes[owner]
        chips = rng.integers(-10, 150, (n, 2)).astype(np.float32)
        chips = np.concatenate([chips, chips + rng.integers(1, 100, (n, 2))], 1).astype(np.float32)
        chips[::3, :2] = np.minimum(chips[::3, :2], image_hw[::3, ::-1] - 1)
        chips[::3, 2:] = image_hw[::3, ::-1]  # many chips end on their own image's far border
        xy = rng.integers(-20, 200, (n, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.integers(0, 60, (n, 2))], 1).astype(np.float32)
        keep = from_device(ops.stack_prune(on_device(boxes, device), on_device(chips, device),
                                           on_device(image_hw, device), (0.0, 50.0)), device)
        expected = [stack_prune_reference(boxes[i:i + 1], chips[i], tuple(image_hw[i]), (0.0, 50.0))[0] for i in range(n)]
        np.testing.assert_array_equal(keep, expected)
        assert 10 < keep.sum() < n - 10
        with pytest.raises(ValueError, match="image_size"):
            ops.stack_prune(on_device(boxes, device), on_device(chips, device), on_device(image_hw[:3], device))
        with pytest.raises(ValueError, match="image_size"):
            bad = image_hw.copy()
            bad[5, 0] = 0
            ops.stack_prune(on_device(boxes, device), on_device(chips, device), on_device(bad, device))

    def test_torch_in_torch_out_and_empty(self):
        keep = ops.stack_prune(torch.zeros((0, 4)), [0, 0, 10, 10], (10, 10))
        assert isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and keep.shape == (0,)
        keep = ops.stack_prune(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), (10, 10))
        assert isinstance(keep, np.ndarray) and keep.dtype == np.bool_ and keep.shape == (0,)

    def test_bad_input(self):
        b = np.array([[1, 1, 5, 5]], np.float32)
        c = np.array([0, 0, 10, 10], np.float32)
        with pytest.raises(ValueError, match="chip"):
            ops.stack_prune(b, np.zeros((2, 4), np.float32), (10, 10))
        with pytest.raises(ValueError, match="chip"):
            ops.stack_prune(b, np.array([10, 0, 0, 10], np.float32), (10, 10))
        with pytest.raises(ValueError, match="boxes"):
            ops.stack_prune(np.array([[5, 1, 1, 5]], np.float32), c, (10, 10))
        with pytest.raises(ValueError, match="image_size"):
            ops.stack_prune(b, c, (10,))
        with pytest.raises(ValueError, match="image_size"):
            ops.stack_prune(b, c, (0, 10))
        with pytest.raises(ValueError, match="valid_range"):
            ops.stack_prune(b, c, (10, 10), (5, 1))
        with pytest.raises(ValueError, match="boxes"):
            ops.stack_prune(np.array([[np.nan, 1, 5, 5]], np.float32), c, (10, 10))


# ---- top_k ---------------------------------------------------------------------------------------

class TestTopK:
    @pytest.mark.parametrize("device", DEVICES)
    def test_random(self, device):
        rng = np.random.default_rng(8)
        for case in range(RANDOM_CASES):
            n = int(rng.integers(0, 60))
            scores = random_scores(rng, n, ties=case % 2 == 0)
            if case % 7 == 0:
                scores = -scores  # negative scores, and -0.0 ties with 0.0
            k = int(rng.integers(0, 80))
            idx = from_device(ops.top_k(on_device(scores, device), k), device)
            assert idx.dtype == np.int64 and idx.shape == (min(k, n),)
            np.testing.assert_array_equal(idx, top_k_reference(scores, k))

    @pytest.mark.parametrize("device", DEVICES)
    def test_large_with_ties(self, device):
        rng = np.random.default_rng(9)
        scores = (rng.integers(0, 50, 100_000) / 50).astype(np.float32)
        idx = from_device(ops.top_k(on_device(scores, device), 200), device)
        np.testing.assert_array_equal(idx, np.lexsort((np.arange(len(scores)), -scores))[:200])

    @given(st.lists(st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 1e-30]), max_size=40), st.integers(0, 50))
    @HYP
    def test_property_ties(self, values, k):
        scores = np.array(values, np.float32)
        np.testing.assert_array_equal(ops.top_k(scores, k), top_k_reference(scores, k))

    def test_torch_and_bad_input(self):
        idx = ops.top_k(torch.tensor([0.1, 0.9, 0.5]), 2)
        assert isinstance(idx, torch.Tensor) and idx.tolist() == [1, 2]
        assert ops.top_k(np.zeros(0, np.float32), 5).shape == (0,)
        with pytest.raises(ValueError, match="k"):
            ops.top_k(np.zeros(3, np.float32), -1)
        with pytest.raises(ValueError, match="scores"):
            ops.top_k(np.array([np.nan], np.float32), 1)
        with pytest.raises(ValueError, match="scores"):
            ops.top_k(np.zeros((2, 2), np.float32), 1)


# ---- deferred_checks -----------------------------------------------------------------------------

class TestDeferredChecks:
    @pytest.mark.parametrize("device", DEVICES)
    def test_a_bad_value_still_raises(self, device):
        # Inside the block a CUDA tensor's failed check raises when the block ends; NumPy and CPU tensors
        # at the op. Either way the caller gets the op's own message.
        scores = np.zeros((1, 2, 4, 4), np.float32)
        scores[0, 1, 2, 3] = np.nan
        ltrb = np.ones((1, 4, 4, 4), np.float32)
        with pytest.raises(ValueError, match="scores: contains NaN or inf"):
            with ops.deferred_checks():
                ops.decode(on_device(scores, device), on_device(ltrb, device))
        boxes = np.array([[5, 0, 1, 1]], np.float32)
        with pytest.raises(ValueError, match="boxes: expected x2 >= x1"):
            with ops.deferred_checks():
                ops.soft_nms_segments(on_device(boxes, device), on_device(np.ones(1, np.float32), device),
                                      on_device(np.array([0, 1], np.int64), device))

    @pytest.mark.parametrize("device", DEVICES)
    def test_padded_decode_raises_at_the_block_end_on_cuda(self, device):
        # padded=True reads no count on CUDA: the kernels' NaN/inf flags join the deferred checks, so
        # the results come back first and the error at the block's end (on the host: at the op).
        scores = np.zeros((1, 2, 4, 4), np.float32)
        scores[0, 1, 2, 3] = np.nan
        ltrb = np.ones((1, 4, 4, 4), np.float32)
        returned = []
        with pytest.raises(ValueError, match="scores: contains NaN or inf"):
            with ops.deferred_checks(), ops.trusted_values():
                returned.append(ops.decode(on_device(scores, device), on_device(ltrb, device), padded=True))
        assert len(returned) == (1 if device == "cuda" else 0)

    @pytest.mark.parametrize("device", DEVICES)
    def test_good_values_pass_and_the_block_nests_nothing(self, device):
        scores = np.zeros((1, 2, 4, 4), np.float32)
        scores[0, 1, 2, 3] = 0.9
        ltrb = np.ones((1, 4, 4, 4), np.float32)
        with ops.deferred_checks():
            boxes, sc, labels, _ = ops.decode(on_device(scores, device), on_device(ltrb, device), stride=8)
        np.testing.assert_allclose(from_device(boxes, device), [[27, 19, 29, 21]])
        # outside a block nothing is pending: a later bad call raises at once
        with pytest.raises(ValueError, match="scores"):
            ops.decode(on_device(scores * np.nan, device), on_device(ltrb, device))

    def test_an_error_in_the_block_wins(self):
        with pytest.raises(KeyError):
            with ops.deferred_checks():
                raise KeyError("first")


class TestTrustedValues:
    def test_host_values_are_still_checked(self):
        # trusted_values() skips only CUDA tensors' value checks: NumPy and CPU tensors keep theirs.
        b = np.array([[5, 0, 1, 1]], np.float32)
        with ops.trusted_values():
            for boxes in (b, torch.from_numpy(b)):
                with pytest.raises(ValueError, match="boxes"):
                    ops.soft_nms(boxes, torch.ones(1) if isinstance(boxes, torch.Tensor) else np.ones(1, np.float32))

    @needs_cuda
    @pytest.mark.cuda
    def test_cuda_values_are_checked_by_the_kernels_inside(self):
        # Inside the block decode's Python checks are skipped and its kernels flag what they read: NaN
        # scores anywhere, and NaN ltrb where a box is decoded (an unread cell is harmless there).
        scores = torch.zeros((1, 2, 4, 4), device="cuda")
        scores[0, 1, 2, 3] = 0.9
        ltrb = torch.ones((1, 4, 4, 4), device="cuda")
        with ops.trusted_values():
            boxes, *_ = ops.decode(scores, ltrb, stride=8)
            assert boxes.cpu().tolist() == [[27, 19, 29, 21]]
            for bad_scores, bad_ltrb, message in ((float("nan"), 1.0, "scores"), (0.0, float("inf"), "ltrb")):
                s, t = scores.clone(), ltrb.clone()
                s[0, 0, 0, 0] = bad_scores
                t[0, 2, 2, 3] = bad_ltrb  # the decoded cell's right distance
                with pytest.raises(ValueError, match=f"{message}: contains NaN or inf"):
                    ops.decode(s, t, stride=8)
            t = ltrb.clone()
            t[0, 0, 0, 0] = float("nan")  # a cell no box is decoded from
            assert ops.decode(scores, t, stride=8)[0].shape == (1, 4)
        with pytest.raises(ValueError, match="ltrb"):
            ops.decode(scores, t, stride=8)  # outside the block every cell is checked
