"""FocusPixel labels (paper Sec. 4.1), detection targets, SNIP valid ranges and SNIPER chip cover.

Expected values are worked by hand from the paper's rule or come from plain-Python references written
from the paper/DESIGN text (per-cell loops), never from the code under test.
"""
import math

import numpy as np
import pytest

from model.chips import (Chip, candidate_origins, chip_boxes, cover_boxes, positive_chips, render_chip,
                         scale_factor)
from model.labels import detection_targets, focus_labels, valid_range_mask


def reference_focus_labels(boxes, h, w, stride=16, a=5.0, b=64.0, c=90.0):
    """Per cell, per box, straight from the paper's equation: IoU(cell, box) > 0 <=> positive overlap area."""
    gh, gw = math.ceil(h / stride), math.ceil(w / stride)
    out = [[0] * gw for _ in range(gh)]
    for y in range(gh):
        for x in range(gw):
            cx1, cy1, cx2, cy2 = x * stride, y * stride, (x + 1) * stride, (y + 1) * stride
            kinds = set()
            for bx1, by1, bx2, by2 in boxes:
                inter = max(0.0, min(cx2, bx2) - max(cx1, bx1)) * max(0.0, min(cy2, by2) - max(cy1, by1))
                if inter <= 0:
                    continue
                s = math.sqrt(max(bx2 - bx1, 0) * max(by2 - by1, 0))
                if a < s < b:
                    kinds.add(1)
                elif s < a or b < s < c:
                    kinds.add(-1)
            out[y][x] = 1 if 1 in kinds else (-1 if -1 in kinds else 0)
    return np.array(out, np.int64)


class TestFocusLabelsByHand:
    def test_small_box_marks_the_cells_it_overlaps(self):
        lab = focus_labels([[0, 0, 10, 10]], (64, 64))
        expected = np.zeros((4, 4), np.int64)
        expected[0, 0] = 1
        np.testing.assert_array_equal(lab, expected)

    def test_small_box_spanning_cells(self):
        # 20 < 32 < 40: x overlaps cells 1 and 2; y 0..30 overlaps cells 0 and 1. s = sqrt(20*30) ~ 24.5.
        lab = focus_labels([[20, 0, 40, 30]], (64, 64))
        expected = np.zeros((4, 4), np.int64)
        expected[0:2, 1:3] = 1
        np.testing.assert_array_equal(lab, expected)

    def test_box_on_cell_boundary_touches_only_cells_with_area(self):
        lab = focus_labels([[16, 16, 32, 32]], (64, 64))  # s = 16, exactly cell (1, 1)
        assert lab.sum() == 1 and lab[1, 1] == 1

    def test_tiny_box_is_ignored(self):
        lab = focus_labels([[30, 30, 33, 33]], (64, 64))  # s = 3 < 5, overlaps cells 1 and 2 both ways
        expected = np.zeros((4, 4), np.int64)
        expected[1:3, 1:3] = -1
        np.testing.assert_array_equal(lab, expected)

    def test_medium_box_is_ignored(self):
        lab = focus_labels([[20, 20, 100, 100]], (128, 128))  # s = 80 in (64, 90)
        expected = np.zeros((8, 8), np.int64)
        expected[1:7, 1:7] = -1
        np.testing.assert_array_equal(lab, expected)

    def test_large_box_is_negative(self):
        lab = focus_labels([[0, 0, 100, 100]], (128, 128))  # s = 100 >= 90
        assert (lab == 0).all()

    def test_strict_boundaries(self):
        # The paper's inequalities are strict: s == a, s == b and s == c are "otherwise" -> 0.
        for side in (5.0, 64.0, 90.0):
            assert (focus_labels([[0, 0, side, side]], (128, 128)) == 0).all(), side
        assert focus_labels([[0, 0, 5.01, 5.01]], (64, 64))[0, 0] == 1
        assert focus_labels([[0, 0, 4.99, 4.99]], (64, 64))[0, 0] == -1
        assert focus_labels([[0, 0, 63.9, 63.9]], (64, 64))[0, 0] == 1
        assert focus_labels([[0, 0, 64.1, 64.1]], (128, 128))[0, 0] == -1
        assert focus_labels([[0, 0, 89.9, 89.9]], (128, 128))[0, 0] == -1

    def test_small_wins_over_ignore_and_ignore_over_negative(self):
        boxes = [[0, 0, 80, 80],     # s = 80: -1 on cells 0..4
                 [20, 20, 40, 40],   # s = 20: 1 on cells 1..2
                 [48, 0, 148, 100]]  # s = 100: 0-box, overlaps the -1 box on x cells 3..4
        lab = focus_labels(boxes, (128, 160))
        expected = np.zeros((8, 10), np.int64)
        expected[0:5, 0:5] = -1
        expected[1:3, 1:3] = 1
        np.testing.assert_array_equal(lab, expected)

    def test_box_cut_by_the_chip(self):
        # Box runs off the chip's top-left; sized by its full extent (s = 30 -> small).
        lab = focus_labels([[-20, -20, 10, 10]], (64, 64))
        assert lab[0, 0] == 1 and lab.sum() == 1
        # Runs off the right: s = sqrt(140 * 40) ~ 74.8 -> -1 on the only column inside (x cell 3), rows 0..2.
        lab = focus_labels([[60, 0, 200, 40]], (64, 64))
        expected = np.zeros((4, 4), np.int64)
        expected[0:3, 3] = -1
        np.testing.assert_array_equal(lab, expected)
        # Entirely outside: nothing.
        assert (focus_labels([[70, 70, 90, 90]], (64, 64)) == 0).all()

    def test_boxes_are_measured_after_scaling(self):
        box = [[10, 10, 30, 30]]  # 20 x 20 original pixels
        for factor, expected in ((0.2, -1), (2.0, 1), (4.0, -1), (5.0, 0)):
            b = chip_boxes(box, factor, 0, 0, 512)  # s = 4, 40, 80, 100
            lab = focus_labels(b, (512, 512))
            x, y = int(b[0, 0] // 16), int(b[0, 1] // 16)
            assert lab[y, x] == expected, factor

    def test_empty_and_bad_input(self):
        lab = focus_labels(np.zeros((0, 4)), (48, 80))
        assert lab.shape == (3, 5) and (lab == 0).all()
        with pytest.raises(ValueError, match="boxes"):
            focus_labels([[0, 0, 1]], (64, 64))
        with pytest.raises(ValueError, match="chip_hw"):
            focus_labels([[0, 0, 1, 1]], (0, 64))
        with pytest.raises(ValueError, match="a, b, c"):
            focus_labels([[0, 0, 1, 1]], (64, 64), a=10, b=5)

    def test_matches_reference_on_random_boxes(self):
        rng = np.random.default_rng(0)
        for _ in range(150):
            h, w = int(rng.integers(1, 9)) * 16 + int(rng.integers(0, 16)), int(rng.integers(1, 9)) * 16
            n = int(rng.integers(0, 6))
            xy = rng.uniform(-40, max(h, w) + 10, size=(n, 2))
            wh = np.exp(rng.uniform(np.log(2), np.log(150), size=(n, 2)))
            boxes = np.concatenate([xy, xy + wh], axis=1)
            np.testing.assert_array_equal(focus_labels(boxes, (h, w)), reference_focus_labels(boxes.tolist(), h, w))


class TestValidRanges:
    def test_inclusive_bounds_and_open_top(self):
        sides = np.array([31.9, 32.0, 100.0, 150.0, 150.1])
        boxes = np.stack([np.zeros(5), np.zeros(5), sides, sides], axis=1)
        np.testing.assert_array_equal(valid_range_mask(boxes, (32, 150)), [False, True, True, True, False])
        np.testing.assert_array_equal(valid_range_mask(boxes, (120, -1)), [False, False, False, True, True])
        np.testing.assert_array_equal(valid_range_mask(boxes, (0, 80)), [True, True, False, False, False])

    def test_uses_sqrt_area(self):
        # 10 x 160 has sqrt(area) = 40: valid in [32, 150] although one side is 160.
        assert valid_range_mask([[0, 0, 10, 160]], (32, 150))[0]


class TestDetectionTargets:
    def test_peak_regression_and_ignore(self):
        # One valid box of class 1 centred at (52, 44) -> centre cell x = 6, y = 5; one ignored class-0 box.
        t = detection_targets([[32, 24, 72, 64]], [1], [[0, 0, 20, 20]], [0], 3, (96, 128), stride=8)
        assert t["heatmap"].shape == (3, 12, 16)
        assert t["heatmap"][1, 5, 6] == 1.0 and (t["heatmap"][1] == 1.0).sum() == 1
        assert t["heatmap"][0].max() == 0 and t["heatmap"][2].max() == 0
        # Ignored box: cells x, y in 0..2 (0..20 px) have weight 0 for class 0 only.
        assert (t["cls_weight"][0, 0:3, 0:3] == 0).all() and t["cls_weight"][0].sum() == 12 * 16 - 9
        assert (t["cls_weight"][1:] == 1).all()
        # Regressed cells: inside the box, target equals the box; the weights sum to log(area).
        reg = t["reg_weight"] > 0
        assert reg[5, 6]
        np.testing.assert_allclose(t["box_target"][:, reg].T, np.tile([32, 24, 72, 64], (reg.sum(), 1)))
        np.testing.assert_allclose(t["reg_weight"].sum(), math.log(40 * 40), rtol=1e-5)
        ys, xs = np.nonzero(reg)
        assert ((xs + 0.5) * 8 > 32).all() and ((xs + 0.5) * 8 < 72).all()
        assert ((ys + 0.5) * 8 > 24).all() and ((ys + 0.5) * 8 < 64).all()

    def test_gaussian_follows_the_box_shape(self):
        t = detection_targets([[0, 40, 160, 56]], [0], np.zeros((0, 4)), [], 1, (128, 256), stride=8)
        hm = t["heatmap"][0]
        cy, cx = np.unravel_index(np.argmax(hm), hm.shape)
        assert (cy, cx) == (6, 10)
        # sigma_x = 0.54 * 20 / 6 = 1.8 cells: exp(-1 / (2 * 1.8^2)) one cell to the side.
        np.testing.assert_allclose(hm[cy, cx + 1], math.exp(-1 / (2 * 1.8 ** 2)), rtol=1e-5)
        assert hm[cy + 1, cx] < hm[cy, cx + 1]  # the box is wide and flat

    def test_smaller_box_overrides_regression(self):
        big, small = [0, 0, 128, 128], [56, 56, 72, 72]
        t = detection_targets([big, small], [0, 0], np.zeros((0, 4)), [], 1, (128, 128), stride=8)
        np.testing.assert_allclose(t["box_target"][:, 8, 8], small)

    def test_empty_and_bad_input(self):
        t = detection_targets(np.zeros((0, 4)), [], np.zeros((0, 4)), [], 2, (64, 64))
        assert t["heatmap"].sum() == 0 and t["reg_weight"].sum() == 0 and (t["cls_weight"] == 1).all()
        with pytest.raises(ValueError, match="classes"):
            detection_targets([[0, 0, 8, 8]], [5], np.zeros((0, 4)), [], 2, (64, 64))
        with pytest.raises(ValueError, match="classes"):
            detection_targets([[0, 0, 8, 8]], [0, 1], np.zeros((0, 4)), [], 2, (64, 64))


class TestChips:
    def test_scale_factor(self):
        assert scale_factor(480, 640, (-1, 512)) == pytest.approx(0.8)
        assert scale_factor(480, 640, (800, 1280)) == pytest.approx(800 / 480)
        assert scale_factor(480, 1600, (800, 1280)) == pytest.approx(0.8)  # the max side binds
        with pytest.raises(ValueError, match="height"):
            scale_factor(0, 10, (800, 1280))

    def test_candidate_origins_reach_the_border(self):
        np.testing.assert_array_equal(candidate_origins(400, 512, 32), [0])
        o = candidate_origins(1067, 512, 32)
        assert o[0] == 0 and o[-1] == 1067 - 512 and (np.diff(o) <= 32).all()

    def test_cover_contains_every_box(self):
        rng = np.random.default_rng(1)
        for _ in range(20):
            xy = rng.uniform(0, 1500, size=(12, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(5, 200, size=(12, 2))], axis=1)
            boxes[:, 2] = boxes[:, 2].clip(None, 1700)
            boxes[:, 3] = boxes[:, 3].clip(None, 1700)
            chips = cover_boxes(boxes, (1700, 1700), 512, 32)
            for b in boxes:
                assert any(x0 <= b[0] and b[2] <= x0 + 512 and y0 <= b[1] and b[3] <= y0 + 512 for x0, y0 in chips)
            assert len(chips) <= len(boxes)
            assert all(x0 % 32 == 0 or x0 == 1700 - 512 for x0, _ in chips)

    def test_cover_is_greedy_on_clusters(self):
        # Two far-apart clusters of boxes: exactly two chips.
        boxes = [[10, 10, 30, 30], [50, 60, 80, 90], [1200, 1200, 1220, 1230], [1250, 1210, 1300, 1260]]
        assert len(cover_boxes(boxes, (1400, 1400), 512, 32)) == 2
        assert cover_boxes(np.zeros((0, 4)), (100, 100), 512, 32) == []

    def test_positive_chips_use_valid_ranges(self):
        # 640 x 480 image; a 20 px box is valid only at scale 3 ([0, 80]); a 200 px box only at scale 1.
        boxes = [[100, 100, 120, 120], [300, 200, 500, 400]]
        scales = [(-1, 512), (800, 1280), (1400, 2000)]
        ranges = [(120, -1), (32, 150), (0, 80)]
        chips = positive_chips(0, boxes, (480, 640), scales, ranges, 512, 32)
        assert sorted(c.scale_index for c in chips) == [0, 2]
        c3 = [c for c in chips if c.scale_index == 2][0]
        f = 1400 / 480
        assert c3.x0 <= 100 * f and 120 * f <= c3.x0 + 512
        # With nothing valid at scale 1, the whole-image chip is still added when asked.
        chips = positive_chips(0, boxes[:1], (480, 640), scales, ranges, 512, 32, always_whole_image_scales=(0,))
        assert [(c.scale_index, c.x0, c.y0) for c in chips if c.scale_index == 0] == [(0, 0, 0)]

    def test_render_chip_matches_resize_and_crop(self):
        import cv2
        rng = np.random.default_rng(2)
        img = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
        out = render_chip(img, 2.0, 32, 16, 64, 96)
        big = cv2.resize(img, (160, 120), interpolation=cv2.INTER_LINEAR)
        ref = big[16:16 + 64, 32:32 + 96, ::-1].astype(np.float32) / 255
        ref = (ref - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        # Same pixel-centre convention as cv2.resize; warpAffine's fixed-point weights differ slightly.
        d = np.abs(out.transpose(1, 2, 0) - ref)
        assert d.mean() < 0.005 and d.max() < 0.05
        # Padding beyond the resized image is 0 once normalised.
        out = render_chip(img, 1.0, 0, 0, 96, 96)
        assert np.abs(out[:, 60:, :]).max() < 0.02 and np.abs(out[:, :, 80:]).max() < 0.02
        flipped = render_chip(img, 1.0, 0, 0, 60, 80, flip=True)
        np.testing.assert_allclose(flipped, render_chip(img[:, ::-1].copy(), 1.0, 0, 0, 60, 80), atol=1e-5)
        # Downscaling is an area average (cv2.INTER_AREA) of the whole image.
        half = render_chip(img, 0.5, 0, 0, 30, 40)
        area = cv2.resize(img, (40, 30), interpolation=cv2.INTER_AREA)[:, :, ::-1].astype(np.float32) / 255
        area = (area - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        np.testing.assert_allclose(half, area.transpose(2, 0, 1), atol=1e-4)

    def test_chip_boxes_flip(self):
        b = chip_boxes([[10, 20, 30, 40]], 2.0, 4, 8, 100, flip=True)
        np.testing.assert_allclose(b, [[100 - 56, 32, 100 - 16, 72]])
        assert isinstance(Chip(0, 0, 1.0, 0, 0, 512), Chip)
