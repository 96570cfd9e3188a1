"""Chips packed onto canvases (runtime/packing.py): the packer's geometry against brute-force pairwise
checks in NumPy, and the cascade's packed scales against its unpacked ones with a translation-equivariant
network, on which packing must change nothing."""
import dataclasses
import itertools

import numpy as np
import pytest
import torch
from engine_fixtures import TEST_CANVASES

from runtime import cascade, packing
from runtime.bundle import BundleError, load_bundle, write_bundle
from runtime.params import bundle_values, resolve
from runtime.stats import RunStats

GRID = 32


def _random_case(rng, n, gutter):
    canvases = [[int(rng.integers(4, 12)) * GRID, int(rng.integers(4, 12)) * GRID] for _ in range(rng.integers(1, 3))]
    # mostly chips that fit, some larger than every canvas
    top = max(max(c) for c in canvases)
    sizes = np.stack([rng.integers(1, top + 64, n), rng.integers(1, top + 64, n)], 1)
    return sizes, canvases, gutter


def _check_layout(sizes, canvases, gutter, result, own_shape):
    """Every property the packer promises, checked chip by chip and pair by pair."""
    sizes = np.asarray(sizes).reshape(-1, 2)
    n = len(sizes)
    assert result.canvas.shape == (n,) and result.offsets.shape == (n, 2)
    assert set(result.canvas.tolist()) == set(range(result.count))  # no empty canvas
    declared = {tuple(c) for c in canvases}
    for i, (h, w) in enumerate(sizes):
        c = result.canvas[i]
        x, y = result.offsets[i]
        H, W = result.shapes[c]
        assert x % GRID == 0 and y % GRID == 0 and x >= 0 and y >= 0
        assert y + h <= H and x + w <= W, "chip outside its canvas"
        fits_declared = any(h <= ch and w <= cw for ch, cw in declared)
        if fits_declared:  # (gutter and canvases are multiples of the grid here)
            assert not result.own[c] and tuple(result.shapes[c]) in declared
        else:
            assert result.own[c] and (x, y) == (0, 0)
            assert tuple(result.shapes[c]) == tuple(own_shape(h, w))
            assert (result.canvas == c).sum() == 1, "a chip's own canvas holds it alone"
    for i, j in itertools.combinations(range(n), 2):
        if result.canvas[i] != result.canvas[j]:
            continue
        (xi, yi), (hi, wi) = result.offsets[i], sizes[i]
        (xj, yj), (hj, wj) = result.offsets[j], sizes[j]
        apart = (xi + wi + gutter <= xj or xj + wj + gutter <= xi or yi + hi + gutter <= yj or yj + hj + gutter <= yi)
        assert apart, f"chips {i} and {j} closer than the gutter {gutter}"


@pytest.mark.parametrize("seed", range(12))
def test_pack_random_cases_keep_every_promise(seed):
    rng = np.random.default_rng(seed)
    gutter = int(rng.choice([0, 32, 64]))
    sizes, canvases, gutter = _random_case(rng, int(rng.integers(1, 40)), gutter)
    own = lambda h, w: (-(-h // 64) * 64, -(-w // 64) * 64)  # noqa: E731
    result = packing.pack(sizes, canvases, gutter, GRID, own_shape=own)
    _check_layout(sizes, canvases, gutter, result, own)


def test_pack_odd_gutter_still_keeps_chips_apart_and_inside():
    rng = np.random.default_rng(7)
    sizes = np.stack([rng.integers(1, 200, 60), rng.integers(1, 300, 60)], 1)
    result = packing.pack(sizes, [[256, 320]], gutter=13, grid=GRID)
    for i, j in itertools.combinations(range(len(sizes)), 2):
        if result.canvas[i] == result.canvas[j]:
            (xi, yi), (hi, wi), (xj, yj), (hj, wj) = result.offsets[i], sizes[i], result.offsets[j], sizes[j]
            assert xi + wi + 13 <= xj or xj + wj + 13 <= xi or yi + hi + 13 <= yj or yj + hj + 13 <= yi
    inside = (result.offsets + sizes[:, ::-1] <= result.shapes[result.canvas][:, ::-1]).all()
    assert inside


def test_pack_fills_a_canvas_that_the_chips_tile_exactly():
    # 96 + 32 px a chip = 4 grid cells; a 224 + 32 px canvas = 8 cells a side: four chips, one canvas
    result = packing.pack([[96, 96]] * 4, [[224, 224]], gutter=32, grid=GRID)
    assert result.count == 1
    assert sorted(map(tuple, result.offsets.tolist())) == [(0, 0), (0, 128), (128, 0), (128, 128)]
    # a fifth opens a second canvas
    assert packing.pack([[96, 96]] * 5, [[224, 224]], gutter=32, grid=GRID).count == 2


def test_pack_opens_the_first_declared_shape_that_holds_the_chip():
    result = packing.pack([[300, 100], [100, 300]], [[128, 320], [320, 128]], gutter=0, grid=GRID)
    assert result.count == 2
    assert [tuple(result.shapes[c]) for c in result.canvas] == [(320, 128), (128, 320)]


def test_chip_larger_than_every_canvas_gets_its_own_shape():
    result = packing.pack([[500, 40], [40, 40]], [[256, 256]], gutter=32, grid=GRID,
                          own_shape=lambda h, w: (512, 64))
    assert result.own[result.canvas[0]] and not result.own[result.canvas[1]]
    assert tuple(result.shapes[result.canvas[0]]) == (512, 64) and tuple(result.shapes[result.canvas[1]]) == (256, 256)
    with pytest.raises(ValueError, match="own_shape"):
        packing.pack([[500, 40]], [[256, 256]], own_shape=lambda h, w: (256, 64))


def test_zero_chips_and_bad_input():
    empty = packing.pack(np.zeros((0, 2), np.int64), [[256, 256]])
    assert empty.count == 0 and empty.canvas.shape == (0,) and empty.offsets.shape == (0, 2)
    assert packing.pack([], [[256, 256]]).count == 0
    assert packing.pack([], []).count == 0
    for sizes, canvases, kw, what in [([[0, 5]], [[64, 64]], {}, "sizes"), ([[5.5, 5]], [[64, 64]], {}, "sizes"),
                                      ([[np.nan, 5]], [[64, 64]], {}, "sizes"), ([[5, 5]], [[0, 64]], {}, "canvases"),
                                      ([[5, 5]], [[64]], {}, "canvases"), ([[5, 5]], [[64, 64]], {"gutter": -1}, "gutter"),
                                      ([[5, 5]], [[64, 64]], {"grid": 0}, "grid"), ("ab", [[64, 64]], {}, "sizes")]:
        with pytest.raises(ValueError, match=what):
            packing.pack(sizes, canvases, **kw)
    # no declared canvas at all: every chip its own
    alone = packing.pack([[10, 20], [40, 50]], [], gutter=32)
    assert alone.own.all() and alone.shapes[alone.canvas].tolist() == [[32, 32], [64, 64]]


def test_rows_and_paste_put_each_crop_at_its_offset():
    sizes = np.array([[20, 30], [50, 10], [7, 7], [64, 64]])
    result = packing.pack(sizes, [[128, 128]], gutter=32, grid=GRID)
    canvases = list(range(result.count))
    rows = packing.rows_of(result, canvases)
    assert sorted(rows.tolist()) == [0, 1, 2, 3]
    crops = [torch.full((3, *sizes[i]), float(i + 1)) for i in rows]
    out = packing.paste(crops, result, canvases, (128, 128)).numpy()
    want = np.zeros((result.count, 3, 128, 128), np.float32)
    for i in range(4):
        (x, y), (h, w) = result.offsets[i], sizes[i]
        want[result.canvas[i], :, y:y + h, x:x + w] = i + 1
    np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="crops"):
        packing.paste(crops[:-1], result, canvases, (128, 128))


def test_owners_against_a_python_loop():
    rng = np.random.default_rng(3)
    rects = np.array([[0, 0, 40, 30], [64, 0, 100, 50], [0, 64, 30, 90], [0, 0, 50, 50]], np.float32)
    rect_batch = np.array([0, 0, 0, 1])
    boxes = rng.uniform(-10, 110, (300, 4)).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(0, 20, (300, 2))
    batch = rng.integers(0, 3, 300)
    owner, found = packing.owners(torch.from_numpy(boxes), torch.from_numpy(batch), torch.from_numpy(rects),
                                  torch.from_numpy(rect_batch))
    for d in range(300):
        cx, cy = (boxes[d, 0] + boxes[d, 2]) / 2, (boxes[d, 1] + boxes[d, 3]) / 2
        hits = [p for p in range(4) if rect_batch[p] == batch[d] and rects[p, 0] <= cx < rects[p, 2]
                and rects[p, 1] <= cy < rects[p, 3]]
        assert bool(found[d]) == bool(hits)
        if hits:
            assert int(owner[d]) == hits[0]


def test_the_test_bundle_declares_its_canvases(bundle):
    assert bundle.canvases == TEST_CANVASES


def test_default_canvases_hold_every_whole_image_of_their_scale():
    scales = [[96, 128], [160, 256], [250, 390]]
    canvases = packing.default_canvases(scales, 32)
    assert canvases == [[], [[160, 256], [256, 160]], [[256, 416], [416, 256]]]


# ------------------------------------------------------------------------------------ the cascade

class LocalNetwork:
    """A network whose every output cell depends only on the input pixels under that cell: moved by a
    multiple of 32 px, an input's outputs move with it, so packed chips (gutter >= one cell) must give the
    unpacked path's detections exactly. Scores: sigmoid(6 (mean of channel 0 over the 8-px cell - 1)) per
    class (class c scaled by 1 / (c + 1)); boxes the cell itself; focus: the same of the max over 16-px cells."""

    def __init__(self, classes):
        self.classes = classes
        self.calls = []

    def __call__(self, batch):
        self.calls.append(tuple(batch.shape))
        x = batch[:, :1]
        s8 = torch.sigmoid(6 * (torch.nn.functional.avg_pool2d(x, 8) - 1))
        s16 = torch.sigmoid(6 * (torch.nn.functional.max_pool2d(x, 16) - 1))
        # the noise of channel 1 makes every cell's score its own: no ties for Soft-NMS to order by index
        s8 = s8 * (0.75 + 0.2 * torch.tanh(torch.nn.functional.avg_pool2d(batch[:, 1:2], 8)))
        scores = torch.cat([s8 / (c + 1) for c in range(self.classes)], 1).contiguous()
        ltrb = torch.full((x.shape[0], 4, *s8.shape[2:]), 4.0)
        return {"scores": scores, "ltrb": ltrb, "focus": torch.cat([1 - s16, s16], 1).contiguous()}


def _scene(rng, h, w, squares):
    """A dark image with bright squares in red, noise in green (BGR uint8)."""
    image = np.full((h, w, 3), 10, np.uint8)
    image[..., 1] = rng.integers(0, 256, (h, w))
    for _ in range(squares):
        side = int(rng.integers(12, 40))
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        image[y:y + side, x:x + side, 2] = 250
    return image


def _run(bundle, images, network, **overrides):
    params = resolve(bundle_values(bundle), {"padding": "shared", "max_batch": 4, **overrides})
    stats = RunStats("autofocus", len(images), len(params.scales), "none", "cpu", params.padding)
    ctx = cascade.Context(images=[torch.from_numpy(im) for im in images], image_sizes=[im.shape[:2] for im in images],
                          network=network, bundle=bundle, params=params, stats=stats, device=torch.device("cpu"))
    return cascade.run(ctx, "autofocus"), stats.as_dict()


@pytest.mark.parametrize("box_score", [None, 0.5])
def test_packed_detections_equal_the_unpacked_ones_with_a_local_network(bundle, box_score):
    rng = np.random.default_rng(11)
    images = [_scene(rng, int(rng.integers(380, 520)), int(rng.integers(560, 720)), 6) for _ in range(5)]
    images.append(_scene(rng, 640, 460, 5))  # portrait
    chip_params = [{"box_score": box_score}, {"box_score": box_score}]
    net = LocalNetwork(len(bundle.classes))
    plain, plain_stats = _run(bundle, images, net, packing="none", chip_params=chip_params)
    net_packed = LocalNetwork(len(bundle.classes))
    packed, packed_stats = _run(bundle, images, net_packed, packing="canvas", canvas_gutter=32,
                                chip_params=chip_params)
    assert [s["chips"] for s in packed_stats["scales"]] == [s["chips"] for s in plain_stats["scales"]]
    assert packed_stats["scales"][2]["chips"] > len(images), "the case must pack several chips a canvas"
    assert sum(len(d) for d in plain) > 20
    for a, b in zip(plain, packed):
        for ca, cb in zip(a.chips, b.chips):  # the same chips (in canvas order): the maps were cut where they lie
            np.testing.assert_array_equal(ca[np.lexsort(ca.T[::-1])], cb[np.lexsort(cb.T[::-1])])
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    # fewer network calls, and only canvas shapes at the chip scales
    assert len(net_packed.calls) < len(net.calls)
    canvases = bundle.canvases["shapes"]
    for s in (1, 2):
        shapes = {tuple(map(int, k.split("x"))) for k in packed_stats["scales"][s]["shapes"]}
        assert shapes <= {tuple(c) for c in canvases[s]} and 1 <= len(shapes) <= 2
        # padded pixels: the pixels of the canvases the network ran, fewer canvases than chips
        runs = [c for c in net_packed.calls if (c[2], c[3]) in shapes]
        assert packed_stats["scales"][s]["padded_pixels"] == sum(n * h * w for n, _, h, w in runs)
    assert sum(c[0] for c in net_packed.calls if (c[2], c[3]) in {tuple(c) for c in canvases[2]}) \
        < packed_stats["scales"][2]["chips"]


def test_declared_canvases_are_used_and_checked(bundle, tmp_path):
    declared = {"gutter": 64, "shapes": [[], [[256, 256]], [[384, 384]]]}
    b = dataclasses.replace(bundle, canvases=declared)
    assert packing.canvases_for(b, b.scales, 2) == [[384, 384]] and packing.bundle_gutter(b) == 64
    # scales overridden per call: the declared shapes no longer apply, the default ones do
    other = [[96, 128], [160, 256], [300, 400]]
    assert packing.canvases_for(b, other, 2) == packing.default_canvases(other, 32)[2]
    rng = np.random.default_rng(5)
    images = [_scene(rng, 450, 640, 6) for _ in range(4)]
    _, stats = _run(b, images, LocalNetwork(len(bundle.classes)), packing="canvas")
    assert set(stats["scales"][2]["shapes"]) <= {"384x384"} and stats["scales"][2]["shapes"]


def test_bundle_canvases_field_is_optional_and_validated(bundle, tmp_path):
    import json
    import shutil
    folder = tmp_path / "b"
    shutil.copytree(bundle.folder, folder)
    meta = json.loads((folder / "bundle.json").read_text())
    meta.pop("canvases", None)
    (folder / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(folder).canvases == {}  # an older bundle
    for bad in ({"gutter": -1, "shapes": [[], [], []]}, {"gutter": 32, "shapes": [[], []]},
                {"gutter": 32, "shapes": [[], [[100, 128]], []]}, {"shapes": [[], [], []]}):
        (folder / "bundle.json").write_text(json.dumps({**meta, "canvases": bad}))
        with pytest.raises(BundleError, match="canvases"):
            load_bundle(folder)
    fields = {k: v for k, v in bundle.to_dict().items()
              if k not in ("classes", "buckets", "max_batch", "precision", "artefacts")}
    fields["canvases"] = {"gutter": 32, "shapes": [[], [[160, 256]], [[256, 384], [384, 256]]]}
    written = write_bundle(folder, classes=bundle.classes, buckets=bundle.buckets, max_batch=bundle.max_batch, **fields)
    assert load_bundle(folder).canvases == written.canvases == fields["canvases"]


def test_packing_parameters_are_checked(bundle):
    base = bundle_values(bundle)
    assert resolve(base).packing == "none" and resolve(base).canvas_gutter is None
    assert resolve(base, {"packing": "canvas", "canvas_gutter": 0}).packing == "canvas"
    with pytest.raises(ValueError, match="packing"):
        resolve(base, {"packing": "tight"})
    with pytest.raises(ValueError, match="canvas_gutter"):
        resolve(base, {"canvas_gutter": -32})
    with pytest.raises(TypeError, match="canvas_gutter"):
        resolve(base, {"canvas_gutter": 1.5})


def test_engine_defaults_and_per_call_packing(engine):
    assert engine.params.packing == "none"  # the CPU: each chip its own input
    rng = np.random.default_rng(2)
    image = _scene(rng, 450, 640, 5)
    engine(image, packing="canvas")
    shapes = engine.last_stats["scales"][2]["shapes"]
    assert len(shapes) <= 2


def test_fixed_shape_backends_refuse_canvases_that_are_not_buckets(bundle):
    """TensorRT runs the bundle's buckets only (no TensorRT here: its backend's fixed_shapes flag is set on
    an onnxruntime engine, the one property the check reads)."""
    from runtime.engine import AutoFocusEngine
    odd = dataclasses.replace(bundle, canvases={"gutter": 32, "shapes": [[], [[160, 256]], [[288, 416]]]})
    engine = AutoFocusEngine(odd, backend="onnxruntime", padding="bucket")
    engine._backend.fixed_shapes = True
    assert engine._resolve({}).packing == "none"
    with pytest.raises(ValueError, match=r"packing: the canvases \[\[288, 416\]\] of scale 3"):
        engine._resolve({"packing": "canvas"})
    fine = AutoFocusEngine(bundle, backend="onnxruntime", padding="bucket")
    fine._backend.fixed_shapes = True
    assert fine._resolve({"packing": "canvas"}).packing == "canvas"


@pytest.mark.parametrize("seed", range(4))
def test_paste_slots_equals_a_numpy_loop_of_slices(seed):
    """packing.paste_slots (one indexed copy) against each chip pasted by a NumPy slice, for chips of
    mixed sizes in slots larger than them (the slot's excess must not reach a neighbour)."""
    rng = np.random.default_rng(seed)
    sizes = np.stack([rng.integers(1, 90, 12), rng.integers(1, 90, 12)], 1)
    layout = packing.pack(sizes, [[256, 320], [192, 192]], 32, GRID)
    n = len(sizes)
    slot_hw = sizes.max(0)
    crops = rng.normal(size=(n, 3, *slot_hw)).astype(np.float32)
    shape = tuple(int(v) for v in layout.shapes.max(0))
    expected = np.zeros((layout.count, 3, *shape), np.float32)
    for m in range(n):
        (x, y), (h, w) = layout.offsets[m], sizes[m]
        expected[layout.canvas[m], :, y:y + h, x:x + w] = crops[m, :, :h, :w]
    flat = torch.zeros(expected.size + 1)
    packing.paste_slots(flat, expected.shape, torch.from_numpy(crops), torch.from_numpy(layout.canvas),
                        torch.from_numpy(layout.offsets), torch.from_numpy(sizes))
    np.testing.assert_array_equal(flat[:-1].view(*expected.shape).numpy(), expected)
    assert packing.size_classes([[17, 33], [32, 64], [33, 64]]).tolist()[:2] == [5 * 64 + 6] * 2
