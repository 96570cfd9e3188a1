"""Cascade stages (runtime/cascade.py) and their geometry (runtime/geometry.py): batching, focus stacking on
constructed cases, chip merging, and the chips the engine runs against Algorithm 1 applied (by
tests/reference.py) to the network's own focus maps, computed here with a separate onnxruntime session."""
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine_fixtures import TEST_SCALES, TEST_VALID_RANGES, ceil_to, resized, scale_factor, val_images
from reference import (chips_to_image_reference, crop_resize_reference, decode_reference, focus_chips_reference,
                       paint_boxes_reference, stack_prune_reference)
from runtime import batching, cascade, geometry, ops
from runtime.params import bundle_values, resolve
from runtime.stats import RunStats


@pytest.fixture(scope="module")
def session(bundle):
    return ort.InferenceSession(str(bundle.folder / "model.onnx"), providers=["CPUExecutionProvider"])


def _context(bundle, image_sizes, padding="divisor", **overrides):
    params = resolve({**bundle_values(bundle), "padding": padding}, overrides)
    images = [torch.zeros((h, w, 3), dtype=torch.uint8) for h, w in image_sizes]
    stats = RunStats("test", len(images), len(params.scales), "none", "cpu", padding)
    return cascade.Context(images=images, image_sizes=list(image_sizes), network=None, bundle=bundle,
                           params=params, stats=stats, device=torch.device("cpu"))


def _focus_map(session, bundle, image, box, f):
    """The network's stride-16 FocusPixel map over the real cells of `box` of `image` resized by f."""
    x1, y1, x2, y2 = box
    oh, ow = resized(y2 - y1, x2 - x1, f)
    norm = bundle.input
    batch = ops.crop_resize(image, np.array([box], np.float32), np.array([f], np.float32),
                            (ceil_to(oh, 32), ceil_to(ow, 32)), norm["mean"], norm["std"])
    focus = session.run(["focus"], {"image": batch})[0]
    return focus[0, 1, :math.ceil(oh / 16), :math.ceil(ow / 16)], (oh, ow)


def _snap(chips, parent, f):
    """Sides within one resized pixel of the parent's sides lie on them (geometry.snap_to_parent's rule)."""
    parent = np.asarray(parent, np.float32)
    return np.where(np.abs(chips - parent) <= 1.0 / f, parent, chips).astype(np.float32)


# ------------------------------------------------------------------------------------ geometry

def test_resized_size_is_what_crop_resize_makes():
    image = np.full((421, 697, 3), 255, np.uint8)
    for box, f in [((0, 0, 697, 421), scale_factor(421, 697, TEST_SCALES[0])), ((10.5, 3.25, 300.75, 250.5), 0.37),
                   ((0, 0, 697, 421), 0.1)]:
        h, w = geometry.resized_size(np.array(box, np.float32), f)
        out = ops.crop_resize(image, np.array([box], np.float32), np.array([f], np.float32), (h + 8, w + 8),
                              (0, 0, 0), (1, 1, 1))
        filled = out[0, 0] > 0.5  # white pixels inside the chip, zero padding outside
        assert (filled.any(1).sum(), filled.any(0).sum()) == (h, w)


def test_input_shape_buckets_and_divisor(bundle):
    ctx = _context(bundle, [(100, 100)], padding="bucket")
    assert ctx.batching.input_shape((77, 128)) == (96, 128)
    assert ctx.batching.input_shape((100, 100)) == (128, 128)
    assert ctx.batching.batch_limit((96, 128)) == 2
    ctx = _context(bundle, [(100, 100)], padding="divisor")
    assert ctx.batching.input_shape((77, 128)) == (96, 128)
    assert ctx.batching.input_shape((1, 33)) == (32, 64)
    ctx = _context(bundle, [(100, 100)], padding="bucket")
    with pytest.raises(ValueError, match="fits no bucket"):
        ctx.batching.input_shape((3000, 100))


def test_plan_batches_groups_by_shape_and_splits_at_max_batch(bundle):
    ctx = _context(bundle, [(100, 100)] * 3, padding="bucket")
    regions = [geometry.Region(i % 3, np.zeros(4, np.float32), 1.0, size)
               for i, size in enumerate([(77, 128), (90, 100), (70, 120), (60, 60), (96, 128)])]
    plan = batching.plan_batches(regions, ctx.batching)
    by_shape = {}
    for shape, idx in plan:
        assert len(idx) <= ctx.batching.batch_limit(shape)
        by_shape.setdefault(shape, []).extend(idx)
        for i in idx:
            assert ctx.batching.input_shape(regions[i].size) == shape
    assert sorted(i for idx in by_shape.values() for i in idx) == list(range(5))
    assert sorted(by_shape[(96, 128)]) == [0, 1, 2, 4] and len([p for p in plan if p[0] == (96, 128)]) == 2
    assert by_shape[(64, 64)] == [3]


def test_shared_batches_fill_the_largest_bucket_first(bundle):
    ctx = _context(bundle, [(100, 100)] * 3, padding="shared")
    sizes = [(77, 128), (90, 100), (70, 120), (60, 60), (96, 128), (30, 40), (128, 64), (20, 200)]
    regions = [geometry.Region(i % 3, np.zeros(4, np.float32), 1.0, size) for i, size in enumerate(sizes)]
    plan = batching.plan_batches(regions, ctx.batching)
    own_area = lambda r: math.prod(ctx.batching.input_shape(r.size))  # noqa: E731
    placed = sorted(i for _, idx in plan for i in idx)
    assert placed == list(range(len(sizes)))  # every region exactly once
    for shape, idx in plan:
        assert shape in [tuple(b) for b in bundle.buckets]
        assert len(idx) <= ctx.batching.batch_limit(shape)
        assert all(regions[i].size[0] <= shape[0] and regions[i].size[1] <= shape[1] for i in idx)
        assert [regions[i].image for i in idx] == sorted(regions[i].image for i in idx)  # images together
        # No input runs in a bucket of more than 1 / SHARED_MIN_FILL times its own bucket's area.
        assert all(own_area(regions[i]) >= batching.SHARED_MIN_FILL * shape[0] * shape[1] for i in idx)
    # The first batch is the largest bucket any region needs, and no more calls than bucket padding makes.
    own = [ctx.batching.input_shape(r.size) for r in regions]
    assert plan[0][0] == max(own, key=lambda s: s[0] * s[1])
    bucket_plan = batching.plan_batches(regions, _context(bundle, [(100, 100)] * 3, padding="bucket").batching)
    assert len(plan) <= len(bucket_plan)
    # (77, 128) and (90, 100) both need the 96 x 128 bucket: one call; (60, 60) and (30, 40) share 64 x 64.
    assert any(sorted(idx) == [0, 1] for _, idx in plan) and [3, 5] in [sorted(idx) for _, idx in plan]


def test_max_batch_replaces_the_bundles_limit(bundle):
    sizes = [(77, 128), (90, 100), (70, 120), (60, 60), (96, 128), (30, 40), (128, 64), (20, 200)] * 3
    regions = [geometry.Region(i % 3, np.zeros(4, np.float32), 1.0, size) for i, size in enumerate(sizes)]
    for limit in (1, 3, 16):
        ctx = _context(bundle, [(100, 100)] * 3, padding="shared", max_batch=limit)
        assert ctx.batching.batch_limit((96, 128)) == limit
        plan = batching.plan_batches(regions, ctx.batching)
        assert sorted(i for _, idx in plan for i in idx) == list(range(len(sizes)))
        assert all(len(idx) <= limit for _, idx in plan)
        assert max(len(idx) for _, idx in plan) == min(limit, len(sizes)) or limit == 16
        if limit == 1:
            assert len(plan) == len(sizes)
    default = batching.plan_batches(regions, _context(bundle, [(100, 100)] * 3, padding="shared").batching)
    assert len(batching.plan_batches(regions, ctx.batching)) < len(default)
    for bad, error in ((0, ValueError), (2.5, TypeError), ("8", TypeError)):
        with pytest.raises(error, match="max_batch"):
            _context(bundle, [(100, 100)], max_batch=bad)


# ------------------------------------------------------------------------------------ stacking

def _stack(bundle, boxes, chip, image_hw, valid_range=(0, math.inf), keep=None, finer=None, images=None,
           **overrides):
    """Stacking of `boxes` detected in `chip` of image 0 (or of the image `images` gives per box, each image
    of size image_hw, one chip each); finer: (image, chip box) of the next scale."""
    n = len(boxes)
    images = [0] * n if images is None else images
    count = max(images) + 1
    ctx = _context(bundle, [image_hw] * count, **overrides)
    regions = [geometry.Region(i, np.asarray(chip, np.float32), 1.0, (1, 1)) for i in range(count)]
    keep = torch.ones(n, dtype=torch.bool) if keep is None else torch.tensor(keep)
    image = torch.tensor(images, dtype=torch.int64)
    dets = cascade.ScaleDetections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.ones(n),
                                   torch.zeros(n, dtype=torch.int32), image, image, keep)
    if finer is not None:
        finer = [geometry.Region(i, np.asarray(box, np.float32), 2.0, (1, 1)) for i, box in finer]
    out = cascade.stack(ctx, dets, regions, valid_range, finer)
    return out.boxes[out.keep].numpy()


def test_stacking_drops_boxes_cut_by_an_inner_chip_border(bundle):
    chip = (100, 50, 300, 250)                       # inside a 400 x 500 image: every side is inner
    inside = [150, 100, 200, 150]
    cut_right = [250, 100, 300, 150]                 # right side on the chip's right side
    cut_left = [100, 100, 150, 150]
    beyond = [250, 100, 350, 150]                    # crosses the chip's right side
    kept = _stack(bundle, [inside, cut_right, cut_left, beyond], chip, (400, 500))
    assert kept.tolist() == [inside]


def test_stacking_leaves_out_rows_already_dropped(bundle):
    # decode's padded rows (and anything an earlier stage dropped) stay dropped, even where stacking
    # alone would keep the box
    chip = (100, 50, 300, 250)
    inside, also_inside = [150, 100, 200, 150], [160, 110, 190, 140]
    assert _stack(bundle, [inside, also_inside], chip, (400, 500), keep=[True, False]).tolist() == [inside]


def test_stacking_keeps_boxes_on_the_image_border(bundle):
    chip = (0, 0, 300, 250)                          # left and top sides are the image's
    on_left = [0, 100, 50, 150]
    on_top = [100, 0, 150, 40]
    beyond_left = [-20, 100, 50, 150]                # clipped to the image first: then on the border
    cut_bottom = [100, 200, 150, 250]                # bottom is an inner chip side
    kept = _stack(bundle, [on_left, on_top, beyond_left, cut_bottom], chip, (400, 500))
    assert kept.tolist() == [on_left, on_top, [0, 100, 50, 150]]


def test_stacking_matches_the_reference_rule(bundle):
    rng = np.random.default_rng(0)
    h, w = 300, 400
    xy = rng.uniform(-30, 420, (500, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 120, (500, 2))], 1).astype(np.float32)
    chip = np.array([0, 60, 250, 300], np.float32)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h)
    want = clipped[stack_prune_reference(clipped, chip, (h, w), (10, 90))]
    got = _stack(bundle, boxes, chip, (h, w), (10, 90))
    np.testing.assert_array_equal(got, want)
    assert 0 < len(got) < len(boxes)


def test_stacking_keeps_a_box_below_the_range_where_no_finer_chip_holds_it_whole(bundle):
    """Hand-worked: valid range [40, 200]; the next scale ran in one chip of image 0, (100, 100)-(300, 300).
    A box under 40 px stays unless that chip contains it whole (touching sides count as inside); the
    chip of another image does not count; boxes cut by their own chip or above the range still go."""
    chip = (0, 0, 500, 400)                          # the whole image: no side is inner
    finer = [(0, (100, 100, 300, 300)), (1, (0, 0, 500, 400))]
    small_inside = [150, 150, 170, 170]              # 20 px, in the finer chip: the finer scale's
    small_touching = [100, 280, 120, 300]            # on two of its sides, still inside
    small_outside = [350, 150, 370, 170]             # no finer chip: kept
    small_cut = [290, 150, 310, 170]                 # crosses the finer chip's right side: kept
    small_other_image = [350, 150, 370, 170]         # image 1, whose finer chip covers everything: dropped
    in_range = [150, 150, 210, 210]                  # 60 px, inside the finer chip: kept as always
    too_big = [0, 0, 250, 250]                       # 250 px > 200: dropped as always
    boxes = [small_inside, small_touching, small_outside, small_cut, small_other_image, in_range, too_big]
    images = [0, 0, 0, 0, 1, 0, 0]
    kept = _stack(bundle, boxes, chip, (400, 500), (40, 200), finer=finer, images=images)
    assert kept.tolist() == [small_outside, small_cut, in_range]
    # The paper's rule: below the range goes everywhere.
    off = _stack(bundle, boxes, chip, (400, 500), (40, 200), finer=finer, images=images, keep_uncovered=False)
    assert off.tolist() == [in_range]
    # No finer chips at all (no FocusPixels): every box below the range stays.
    none = _stack(bundle, boxes, chip, (400, 500), (40, 200), finer=[], images=images)
    assert none.tolist() == [small_inside, small_touching, small_outside, small_cut, small_other_image, in_range]


def test_stacking_below_the_range_still_drops_boxes_cut_by_their_own_chip(bundle):
    chip = (100, 50, 300, 250)                       # inner sides
    cut_right = [280, 100, 300, 120]                 # 20 px, on the chip's right side
    free = [150, 100, 170, 120]
    kept = _stack(bundle, [cut_right, free], chip, (400, 500), (40, 200), finer=[])
    assert kept.tolist() == [free]


def test_held_whole_in_blocks_matches_a_direct_comparison(bundle):
    """held_whole compares a block of regions at a time: the same answer as NumPy over all of them."""
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 400, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (300, 2))], 1).astype(np.float32)
    image = rng.integers(0, 3, 300)
    cxy = rng.uniform(0, 350, (150, 2))
    chips = np.concatenate([cxy, cxy + rng.uniform(20, 200, (150, 2))], 1).astype(np.float32)
    owner = rng.integers(0, 3, 150)
    regions = [geometry.Region(int(o), c, 1.0, (1, 1)) for o, c in zip(owner, chips)]
    ctx = _context(bundle, [(500, 500)] * 3)
    got = cascade.held_whole(ctx, torch.from_numpy(boxes), torch.from_numpy(image), regions, block=16)
    want = ((boxes[:, None, 0] >= chips[None, :, 0]) & (boxes[:, None, 1] >= chips[None, :, 1])
            & (boxes[:, None, 2] <= chips[None, :, 2]) & (boxes[:, None, 3] <= chips[None, :, 3])
            & (image[:, None] == owner[None, :])).any(1)
    np.testing.assert_array_equal(got.numpy(), want)
    assert 0 < want.sum() < len(want)


def test_autofocus_without_chips_keeps_every_scale_1_box(engine):
    """No FocusPixel anywhere: no finer scale runs, so with keep_uncovered the cascade keeps all of scale 1's
    detections, those below its valid range too: mode "single" at scale 1 (Soft-NMS off here: hard at IoU
    1, so every candidate comes out). The paper's rule keeps only those inside scale 1's range (float64
    sqrt of the area here)."""
    image = val_images(1)[0][0]
    everything = {"soft_nms": {"method": "hard", "iou_threshold": 1.0}, "max_detections": 10000}
    nothing = [{"threshold": 1.01}, {"threshold": 1.01}]
    raw = engine(image, mode="single", scale=1, **everything)
    area = (raw.boxes[:, 2] - raw.boxes[:, 0]).astype(np.float64) * (raw.boxes[:, 3] - raw.boxes[:, 1])
    positive = area > 0  # (stacking drops boxes clipped to zero area, mode single keeps them)
    side = np.sqrt(np.maximum(area, 0))
    lo = engine.params.valid_ranges[0][0]
    assert (positive & (side < lo)).any()  # the test means something: scale 1 finds boxes below its range

    def rows(det, mask=None):
        table = np.concatenate([det.boxes, det.scores[:, None], det.labels[:, None]], 1)
        table = table if mask is None else table[mask]
        return table[np.lexsort(table.T[::-1])]
    kept = engine(image, chip_params=nothing, **everything)
    np.testing.assert_array_equal(rows(kept), rows(raw, positive))
    paper = engine(image, chip_params=nothing, keep_uncovered=False, **everything)
    assert 0 < len(paper) < len(kept)
    np.testing.assert_array_equal(rows(paper), rows(raw, positive & (side >= lo)))


# ------------------------------------------------------------------------------------ chips

def test_merge_overlapping_chips():
    a, b = [0, 0, 100, 100], [50, 0, 150, 100]        # union 150 x 100 < 2 x 100 x 100: merged
    far = [300, 300, 400, 400]
    corner = [0, 0, 100, 100], [90, 90, 300, 300]     # union 300 x 300 > the two: kept apart
    np.testing.assert_array_equal(geometry.merge_overlapping([a, b, far]), [[0, 0, 150, 100], far])
    np.testing.assert_array_equal(geometry.merge_overlapping(list(corner)), corner)
    touching = [[0, 0, 100, 100], [100, 0, 200, 100]]  # no overlap: nothing to save
    np.testing.assert_array_equal(geometry.merge_overlapping(touching), touching)
    assert geometry.merge_overlapping([]).shape == (0, 4)


def test_snap_to_parent():
    # factor 0.5: a resized pixel is 2 original pixels; sides within 2 of the parent's go onto them.
    parents = np.array([[0, 0, 697, 421], [100, 50, 300, 250]], np.float32)
    chips = np.array([[1.5, 30, 696.0, 419.5], [102.5, 50.5, 298.0, 240]], np.float32)
    np.testing.assert_array_equal(geometry.snap_to_parent(chips, parents, [0.5, 0.5]),
                                  [[0, 30, 697, 421], [102.5, 50, 300, 240]])
    # factor 2: half a pixel
    np.testing.assert_array_equal(geometry.snap_to_parent(chips[1], parents[1], 2.0), [[102.5, 50, 298, 240]])


def _check_aligned(aligned, chips, step, image_hw):
    """What align_to_grid promises, checked in float64: each side moved outward by less than one step onto
    a multiple of step, or onto the image border where the grid line lies outside the image."""
    a, c = np.asarray(aligned, np.float64), np.asarray(chips, np.float64)
    h, w = image_hw
    tol = 1e-3
    assert (a[:, :2] <= c[:, :2] + tol).all() and (a[:, 2:] >= c[:, 2:] - tol).all()          # outward
    assert (c[:, :2] - a[:, :2] < step + tol).all() and (a[:, 2:] - c[:, 2:] < step + tol).all()  # < a step
    on_grid = np.abs(a / step - np.round(a / step)) * step < tol
    on_border = (np.abs(a) < tol) | (np.abs(a - [w, h, w, h]) < tol)
    assert (on_grid | on_border).all()
    assert (a[:, :2] >= -tol).all() and (a[:, 2:] <= np.array([w, h]) + tol).all()


def test_align_to_grid_properties():
    rng = np.random.default_rng(7)
    h, w, step = 421, 697, 32 / 1.37
    xy = rng.uniform(0, [w - 50, h - 50], (200, 2))
    chips = np.concatenate([xy, np.minimum(xy + rng.uniform(5, 300, (200, 2)), [w, h])], 1).astype(np.float32)
    aligned = geometry.align_to_grid(chips, step, (h, w))
    assert aligned.dtype == np.float32 and aligned.shape == chips.shape
    _check_aligned(aligned, chips, step, (h, w))
    # Sides already on the grid or the border stay; an empty list stays empty.
    np.testing.assert_allclose(geometry.align_to_grid(aligned, step, (h, w)), aligned, atol=1e-3)
    assert geometry.align_to_grid(np.zeros((0, 4), np.float32), step, (h, w)).shape == (0, 4)


def test_aligned_chip_input_is_a_window_of_the_whole_image_input():
    """The point of align_chips: the network input of an aligned chip equals the matching window of the
    whole image's input at the same factor (float64 reference resize), so that inside it the network sees
    the pyramid's own pixels; an unaligned chip's input does not."""
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (120, 170, 3), dtype=np.uint8)
    h, w = image.shape[:2]
    f, div = np.float32(1.7), 32
    mean, std = [0.4, 0.45, 0.5], [0.25, 0.25, 0.25]
    oh, ow = resized(h, w, f)
    whole = crop_resize_reference(image, [[0, 0, w, h]], f, (oh, ow), mean, std)[0]
    chips = np.array([[13.3, 20.9, 71.2, 66.0], [101.7, 5.2, 160.4, 90.3], [40.0, 60.5, 170, 120]], np.float32)
    aligned = geometry.align_to_grid(chips, div / float(f), (h, w))
    for chip, unaligned in zip(aligned, chips):
        x0, y0 = int(round(float(chip[0]) * float(f))), int(round(float(chip[1]) * float(f)))
        assert x0 % div == 0 and y0 % div == 0
        size = resized(chip[3] - chip[1], chip[2] - chip[0], f)
        ch, cw = min(size[0], oh - y0), min(size[1], ow - x0)
        got = crop_resize_reference(image, [chip], f, size, mean, std)[0]
        np.testing.assert_allclose(got[:, :ch, :cw], whole[:, y0:y0 + ch, x0:x0 + cw], atol=1e-4)
        u0, v0 = int(round(float(unaligned[0]) * float(f))), int(round(float(unaligned[1]) * float(f)))
        size = resized(unaligned[3] - unaligned[1], unaligned[2] - unaligned[0], f)
        off = crop_resize_reference(image, [unaligned], f, size, mean, std)[0]
        assert np.abs(off[:, :20, :20] - whole[:, v0:v0 + 20, u0:u0 + 20]).max() > 0.01


def test_cascade_chips_are_algorithm_1_on_the_networks_own_maps(bundle, engine, session):
    """Scale-2 chips from the whole image's focus map, scale-3 chips from each scale-2 chip's own map (the
    paper's merge rule at both transitions; test_transition_merge_rule_reaches_algorithm_1 has the other)."""
    image = val_images(1)[0][0]
    h, w = image.shape[:2]
    f1, f2 = (scale_factor(h, w, s) for s in TEST_SCALES[:2])
    prob, hw = _focus_map(session, bundle, image, (0, 0, w, h), f1)
    # Thresholds at quantiles of the random network's maps, so that chips cover part of the input.
    t1 = float(np.quantile(prob, 0.9))
    p1 = {"threshold": t1, "dilation": 1, "min_size": 2, "merge": "touching"}
    cells = focus_chips_reference(prob, t1, 1, 2)
    want2 = _snap(chips_to_image_reference(cells, 16, f1, hw, 2), (0, 0, w, h), f1)
    assert 0 < len(want2)
    want2 = geometry.merge_overlapping(want2)
    maps2 = [_focus_map(session, bundle, image, tuple(c), f2) for c in want2]
    t2 = float(np.quantile(np.concatenate([m.ravel() for m, _ in maps2]), 0.9))
    p2 = {"threshold": t2, "dilation": 1, "min_size": 2, "merge": "touching"}
    want3 = []
    for chip, (m, chip_hw) in zip(want2, maps2):
        cells = focus_chips_reference(m, t2, 1, 2)
        want3 += list(_snap(chips_to_image_reference(cells, 16, f2, chip_hw, 2, offset=chip[:2]), chip, f2))
    want3 = geometry.merge_overlapping(np.array(want3, np.float32).reshape(-1, 4))
    det = engine(image, chip_params=[p1, p2], align_chips=False)
    np.testing.assert_array_equal(det.chips[0], [[0, 0, w, h]])
    np.testing.assert_allclose(det.chips[1], want2, atol=1e-3)
    np.testing.assert_allclose(det.chips[2], want3, atol=1e-3)
    stats = engine.last_stats
    assert [s["chips"] for s in stats["scales"]] == [1, len(want2), len(want3)]
    assert len(want3) > 0
    # align_chips: the same scale-2 chips, each widened onto scale 2's input grid.
    aligned = engine(image, chip_params=[p1, p2], align_chips=True).chips[1]
    assert aligned.shape == want2.shape
    _check_aligned(aligned, want2, bundle.input["size_divisor"] / f2, (h, w))


def test_coarse_scale_runs_autofocus_scale_1_at_its_own_size(bundle, engine, session):
    """coarse_scale: AutoFocus's whole-image input at that size (float64 factor, sides rounded half up)
    and its scale-2 chips from that input's focus map; sniper keeps the bundle's scale 1."""
    image = val_images(1)[0][0]
    h, w = image.shape[:2]
    coarse = (128.0, 176.0)  # larger than TEST_SCALES[0]
    f1 = min(coarse[0] / min(h, w), coarse[1] / max(h, w))
    prob, hw = _focus_map(session, bundle, image, (0, 0, w, h), f1)
    t1 = float(np.quantile(prob, 0.9))
    p1 = {"threshold": t1, "dilation": 1, "min_size": 2, "merge": "touching"}
    closed = {"threshold": 2.0, "dilation": 1, "min_size": 2}  # no scale-3 chips
    want2 = _snap(chips_to_image_reference(focus_chips_reference(prob, t1, 1, 2), 16, f1, hw, 2), (0, 0, w, h), f1)
    assert 0 < len(want2)
    det = engine(image, chip_params=[p1, closed], coarse_scale=list(coarse), align_chips=False)
    np.testing.assert_allclose(det.chips[1], geometry.merge_overlapping(want2), atol=1e-3)
    assert engine.last_stats["scales"][0]["pixels"] == math.floor(h * f1 + 0.5) * math.floor(w * f1 + 0.5)
    plain = engine(image, mode="sniper")
    sniper = engine(image, mode="sniper", coarse_scale=list(coarse))
    np.testing.assert_array_equal(sniper.boxes, plain.boxes)
    f_bundle = scale_factor(h, w, TEST_SCALES[0])
    assert engine.last_stats["scales"][0]["pixels"] == math.floor(h * f_bundle + 0.5) * math.floor(w * f_bundle + 0.5)
    for bad, match in (([128], "coarse_scale"), ([176, 128], "coarse_scale"), ("big", "coarse_scale")):
        with pytest.raises((ValueError, TypeError), match=match):
            engine(image, coarse_scale=bad)


def test_detection_guided_chips_paint_the_coarser_scales_own_boxes(bundle, engine, session):
    """box_score: scale-3 chips from scale 2's focus map with the cells under scale 2's detections (score >=
    box_score, size in scale 3's valid range) set to 1, recomputed here from a separate onnxruntime session
    with the reference decode, painting and Algorithm 1."""
    image = val_images(1)[0][0]
    h, w = image.shape[:2]
    f2 = scale_factor(h, w, TEST_SCALES[1])
    oh, ow = resized(h, w, f2)
    norm = bundle.input
    batch = ops.crop_resize(image, np.array([[0, 0, w, h]], np.float32), np.array([f2], np.float32),
                            (ceil_to(oh, 32), ceil_to(ow, 32)), norm["mean"], norm["std"])
    scores, ltrb, focus = session.run(["scores", "ltrb", "focus"], {"image": batch})
    d = bundle.decode
    boxes, box_scores, _, _ = decode_reference(scores, ltrb, bundle.strides["detection"], d["score_threshold"],
                                               d["max_candidates"], [f2], [(0.0, 0.0)])
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0))
    # Scale 3's valid range set to the middle of the detections' sizes, so that it leaves some out.
    lo, hi = (float(v) for v in np.quantile(side, [0.2, 0.6]))
    ranges = [TEST_VALID_RANGES[0], TEST_VALID_RANGES[1], [lo, hi]]
    fits = (side >= lo) & (side <= hi)
    # The highest box_score (halfway between two scores: no ties) that paints 3 boxes and leaves out at least
    # one as big, so that the chips stay apart and the valid range is seen to matter.
    ranked = np.unique(box_scores)[::-1]
    box_score = next(float((a + b) / 2) for a, b in zip(ranked, ranked[1:])
                     if (fits & (box_scores > a - 1e-9)).sum() >= 3 and (~fits & (box_scores > a - 1e-9)).any())
    painted = fits & (box_scores >= box_score)
    prob = focus[0, 1, :math.ceil(oh / 16), :math.ceil(ow / 16)]
    t2 = float(np.quantile(prob, 0.98))
    with_boxes = paint_boxes_reference(prob[None], (boxes[painted] * f2).astype(np.float32),
                                       np.zeros(int(painted.sum()), np.int64), 16)[0]
    cells = focus_chips_reference(with_boxes, t2, 3, 2)
    want3 = geometry.merge_overlapping(_snap(chips_to_image_reference(cells, 16, f2, (oh, ow), 2), (0, 0, w, h), f2))
    guided = {"threshold": t2, "dilation": 3, "min_size": 2, "box_score": box_score}
    # Transition 1 open (threshold 0): scale 2 runs on the whole image.
    det = engine(image, chip_params=[{"threshold": 0.0}, guided], valid_ranges=ranges, align_chips=False)
    np.testing.assert_array_equal(det.chips[1], [[0, 0, w, h]])
    np.testing.assert_allclose(det.chips[2], want3, atol=1e-3)
    # Every painted detection (clipped to the image) lies inside a scale-3 chip, which the head alone misses.
    clipped = np.stack([boxes[painted][:, 0].clip(0, w), boxes[painted][:, 1].clip(0, h),
                        boxes[painted][:, 2].clip(0, w), boxes[painted][:, 3].clip(0, h)], 1)
    def held(chips):
        return [bool(((c[0] >= chips[:, 0] - 1e-3) & (c[1] >= chips[:, 1] - 1e-3) & (c[2] <= chips[:, 2] + 1e-3)
                      & (c[3] <= chips[:, 3] + 1e-3)).any()) for c in clipped]
    assert all(held(det.chips[2]))
    plain = engine(image, chip_params=[{"threshold": 0.0}, {**guided, "box_score": None}], valid_ranges=ranges,
                   align_chips=False)
    assert not all(held(plain.chips[2]))


def test_paint_detections_selects_by_score_and_the_finer_scales_range(bundle):
    """Constructed detections of two inputs (factor 2 at origin (100, 50), factor 0.5 at (0, 0)): only
    those with score >= 0.3 and sqrt(area) in [10, 40] original px paint, at their input-pixel cells."""
    ctx = _context(bundle, [(400, 500)])
    regions = [geometry.Region(0, np.array([100, 50, 300, 250], np.float32), 2.0, (400, 400)),
               geometry.Region(0, np.array([0, 0, 500, 400], np.float32), 0.5, (200, 250))]
    batch = batching.BatchRegions.of(regions, [0, 1], "cpu")
    boxes = np.array([[110, 60, 130, 80],    # input 0, side 20, score 0.9: paints input cells x 1..3, y 1..3
                      [150, 100, 160, 110],  # side 10 (the range's low end), score 0.3: paints
                      [150, 150, 250, 240],  # side ~95: too big
                      [200, 60, 204, 64],    # side 4: too small
                      [120, 200, 150, 230],  # side 30, score 0.29: too low
                      [0, 0, 64, 16],        # input 1, side 32, score 0.5: paints x 0..1, y 0
                      [200, 100, 220, 120]],  # side 20, score 0.9, but a padded row of decode's: no paint
                     np.float32)
    scores = torch.tensor([0.9, 0.3, 0.95, 0.8, 0.29, 0.5, 0.9])
    det_input = torch.tensor([0, 0, 0, 0, 0, 1, 0])
    n = len(boxes)
    dets = cascade.ScaleDetections(torch.from_numpy(boxes), scores, torch.zeros(n, dtype=torch.int32),
                                   det_input, torch.zeros(n, dtype=torch.int64), torch.arange(n) < n - 1)
    maps = torch.zeros((2, 25, 25))
    out = cascade.paint_detections(ctx, maps, dets, det_input, batch, 0.3, (10.0, 40.0)).numpy()
    factor, origin = np.array([2.0, 0.5]), np.array([[100, 50], [0, 0]], np.float64)
    kept = [0, 1, 5]
    local = [(boxes[k] - np.tile(origin[det_input[k]], 2)) * factor[det_input[k]] for k in kept]
    want = paint_boxes_reference(np.zeros((2, 25, 25), np.float32), np.array(local, np.float32),
                                 det_input.numpy()[kept], 16)
    np.testing.assert_array_equal(out, want)
    assert out[0, 1:4, 1:4].all() and out[1, 0, 0:2].all() and out.sum() == 9 + 4 + 2


def test_box_max_caps_the_sizes_painted(bundle, engine):
    """paint_range: the finer scale's valid range, its upper bound lowered to box_max (never raised)."""
    ctx = _context(bundle, [(400, 500)])
    lo, hi = ctx.params.valid_ranges[1]
    assert cascade.paint_range(ctx, {"box_max": None}, 0) == (lo, hi)
    assert cascade.paint_range(ctx, {"box_max": 60.0}, 0) == (lo, 60.0)
    assert cascade.paint_range(ctx, {"box_max": hi + 100}, 0) == (lo, hi)
    assert cascade.paint_range(ctx, {"box_max": 20.0}, 1) == (ctx.params.valid_ranges[2][0], 20.0)
    # In the engine, with no FocusPixel above the threshold: painted boxes alone make scale 2's chips; a
    # cap below the range's low end paints none of them, and one inside the range fewer, each a box's chip.
    image = val_images(1)[0][0]
    none = [{"threshold": 1.0, "box_score": 0.0, "box_max": None}, {"threshold": 1.01}]  # (the bundle's cap off)
    painted = engine(image, chip_params=none)
    assert len(painted.chips[1]) > 0
    capped_out = engine(image, chip_params=[dict(none[0], box_max=lo / 2), none[1]])
    assert len(capped_out.chips[1]) == 0
    area = lambda c: float(((c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])).sum())  # noqa: E731
    capped = engine(image, chip_params=[dict(none[0], box_max=(lo + hi) / 2), none[1]])
    assert area(capped.chips[1]) < area(painted.chips[1])
    with pytest.raises(ValueError, match=r"chip_params\[0\] box_max"):
        engine(image, chip_params=[{"box_max": 0}, {}])
    with pytest.raises(TypeError, match=r"chip_params\[0\] box_max"):
        engine(image, chip_params=[{"box_max": "big"}, {}])


def test_transition_merge_rule_reaches_algorithm_1(bundle):
    """chip_params' merge picks step 5's rule for the next scale's chips: two FocusPixels whose grown chips
    touch at a corner make one chip under the paper's rule, two under "cheaper" (in original pixels at
    factor 1: cells x 16)."""
    ctx = _context(bundle, [(400, 500)])
    regions = [geometry.Region(0, np.array([0, 0, 500, 400], np.float32), 1.0, (400, 500))]
    batch = batching.BatchRegions.of(regions, [0], "cpu")
    probs = torch.zeros((1, 25, 32))
    probs[0, 5, 5] = probs[0, 9, 9] = 1.0
    params = {"threshold": 0.5, "dilation": 1, "min_size": 4}
    chips = {merge: np.array([box for _, box in cascade.focus_chips_batch(ctx, probs, regions, [0], batch,
                                                                          {**params, "merge": merge})])
             for merge in ("touching", "cheaper")}
    np.testing.assert_allclose(chips["touching"], [[64, 64, 192, 192]])
    np.testing.assert_allclose(chips["cheaper"], [[64, 64, 128, 128], [128, 128, 192, 192]])


def test_merge_rule_is_checked(engine):
    image = val_images(1)[0][0]
    with pytest.raises(ValueError, match=r"chip_params\[1\] merge: expected one of \['touching', 'cheaper'\]"):
        engine(image, chip_params=[{}, {"merge": "smallest"}])
    # An entry without the key takes the paper's rule; an override sets one transition's, key by key.
    assert "merge" not in engine.bundle.chip_params[0]
    chosen = resolve(bundle_values(engine.bundle), {"chip_params": [{}, {"merge": "cheaper"}]}).chip_params
    assert [c["merge"] for c in chosen] == ["touching", "cheaper"]
    assert chosen[1]["threshold"] == engine.bundle.chip_params[1]["threshold"]


def test_box_score_is_checked(engine):
    image = val_images(1)[0][0]
    with pytest.raises(ValueError, match=r"chip_params\[1\] box_score"):
        engine(image, chip_params=[{}, {"box_score": 1.5}])
    with pytest.raises(TypeError, match=r"chip_params\[1\] box_score"):
        engine(image, chip_params=[{}, {"box_score": "high"}])
    with pytest.raises(ValueError, match="unknown"):
        engine(image, chip_params=[{}, {"box_scores": 0.3}])


def test_no_focus_pixels_costs_only_scale_1(engine):
    image = val_images(1)[0][0]
    det = engine(image, chip_params=[{"threshold": 1.01}, {"threshold": 1.01}])
    scales = engine.last_stats["scales"]
    assert scales[0]["pixels"] > 0
    assert [(s["chips"], s["pixels"], s["padded_pixels"]) for s in scales[1:]] == [(0, 0, 0), (0, 0, 0)]
    assert [len(c) for c in det.chips] == [1, 0, 0]
