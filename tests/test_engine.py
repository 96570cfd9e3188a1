"""AutoFocusEngine end to end on generated validation images with a random-weight bundle: every mode
returns valid Detections; "sniper" and "single" equal model/evaluate.py's whole-image computation on the
same network; overrides; detect_batch; image conversions and every bad input; the CLI."""
import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import needs_cuda
from engine_fixtures import TEST_SCALES, val_images
from runtime import AutoFocusEngine, Detections
from runtime.bundle import BundleError

OUTPUTS = ("scores", "ltrb", "focus")


@pytest.fixture(scope="module")
def images():
    return [im for im, _, _ in val_images(3)]


def _check_valid(det: Detections, image_hw, max_detections=200):
    h, w = image_hw
    assert isinstance(det, Detections)
    n = len(det)
    assert det.boxes.shape == (n, 4) and det.boxes.dtype == np.float32
    assert det.scores.shape == (n,) and det.scores.dtype == np.float32
    assert det.labels.shape == (n,) and det.labels.dtype == np.int32
    assert n <= max_detections
    if n:
        assert (det.boxes[:, 0] >= 0).all() and (det.boxes[:, 2] <= w).all()
        assert (det.boxes[:, 1] >= 0).all() and (det.boxes[:, 3] <= h).all()
        assert (det.boxes[:, 2] >= det.boxes[:, 0]).all() and (det.boxes[:, 3] >= det.boxes[:, 1]).all()
        assert ((det.labels >= 0) & (det.labels < 5)).all()
        assert (np.diff(det.scores) <= 1e-6).all()  # Soft-NMS takes the highest remaining score each time


# ------------------------------------------------------------------------------------ modes

@pytest.mark.parametrize("mode", ["autofocus", "sniper", "single"])
def test_modes_return_valid_detections(engine, images, mode):
    for image in images:
        det = engine(image, mode=mode)
        _check_valid(det, image.shape[:2])
        stats = engine.last_stats
        assert stats["mode"] == mode and stats["backend"] == "onnxruntime" and stats["device"] == "cpu"
        assert stats["scales"][0]["chips"] == 1 and stats["scales"][0]["pixels"] > 0
        assert all(s["padded_pixels"] >= s["pixels"] for s in stats["scales"])
        assert set(stats["seconds"]) == {"network", "chips", "postprocess", "total"}
    assert sum(len(engine(im, mode=mode)) for im in images) > 0


class OnnxNetwork:
    """The bundle's network for model/evaluate.py's ScaleRunner (which calls model(batch) -> dict)."""

    def __init__(self, bundle):
        self.session = ort.InferenceSession(str(bundle.folder / "model.onnx"), providers=["CPUExecutionProvider"])

    def __call__(self, batch):
        outs = self.session.run(list(OUTPUTS), {"image": batch.numpy()})
        return {k: torch.from_numpy(v) for k, v in zip(OUTPUTS, outs)}


def _evaluator(bundle):
    from model.evaluate import ScaleRunner
    inference = {"scales": bundle.scales, "valid_ranges": bundle.valid_ranges, "decode": bundle.decode,
                 "soft_nms": bundle.soft_nms, "max_detections": bundle.max_detections}
    config = {"input": {"mean_rgb": bundle.input["mean"], "std_rgb": bundle.input["std"],
                        "size_divisor": bundle.input["size_divisor"]},
              "network": {"det_stride": bundle.strides["detection"], "focus_stride": bundle.strides["focus"]},
              "inference": inference}
    return ScaleRunner(OnnxNetwork(bundle), config), inference


def _assert_same(det, want):
    boxes, scores, labels = want
    np.testing.assert_array_equal(det.boxes, boxes)
    np.testing.assert_array_equal(det.scores, scores)
    np.testing.assert_array_equal(det.labels, labels)


def test_sniper_equals_the_evaluators_pyramid(bundle, engine, images):
    """model/evaluate.py's "pyramid" (its evaluate() loop: every scale, in_valid_range, merge_detections)."""
    from model.evaluate import in_valid_range, merge_detections
    runner, inference = _evaluator(bundle)
    for image in images:
        per_scale = [runner(image, s) for s in inference["scales"]]
        valid = [{k: v[in_valid_range(out["boxes"], r)] for k, v in out.items() if k in ("boxes", "scores", "labels")}
                 for out, r in zip(per_scale, inference["valid_ranges"])]
        want = merge_detections(valid, inference)
        assert len(want[0]) > 0
        _assert_same(engine(image, mode="sniper"), want)


def test_single_equals_the_evaluators_scale(bundle, engine, images):
    from model.evaluate import merge_detections
    runner, inference = _evaluator(bundle)
    image = images[0]
    for i, scale in enumerate(inference["scales"]):
        want = merge_detections([runner(image, scale)], inference)
        _assert_same(engine(image, mode="single", scale=i + 1), want)
        assert [s["chips"] for s in engine.last_stats["scales"]] == [int(j == i) for j in range(3)]


def test_bucket_padding_runs_bucket_shapes(bundle, images):
    engine = AutoFocusEngine(bundle, backend="onnxruntime", padding="bucket")
    det = engine(images[0], mode="sniper")
    _check_valid(det, images[0].shape[:2])
    assert set(engine.last_stats["batches"]) <= {f"{h}x{w}" for h, w in bundle.buckets}
    assert engine.last_stats["padding"] == "bucket"


def test_autofocus_equals_sniper_when_chips_cover_everything(engine, images):
    """Threshold 0 makes every cell a FocusPixel: each finer scale's one chip is the whole image, so the
    cascade runs the pyramid and (focus stacking keeping everything on the image border) must agree."""
    everything = [{"threshold": 0.0}, {"threshold": 0.0}]
    for image in images:
        af = engine(image, chip_params=everything)
        assert [s["chips"] for s in engine.last_stats["scales"]] == [1, 1, 1]
        h, w = image.shape[:2]
        assert all(c.tolist() == [[0, 0, w, h]] for c in af.chips)
        sn = engine(image, mode="sniper")
        # (The pyramid keeps boxes clipped to zero area, stacking drops them; these images have none.)
        assert ((sn.boxes[:, 2] > sn.boxes[:, 0]) & (sn.boxes[:, 3] > sn.boxes[:, 1])).all()
        _assert_same(af, (sn.boxes, sn.scores, sn.labels))


# ------------------------------------------------------------------------------------ batches

def test_detect_batch_equals_single_calls(bundle, images):
    engine = AutoFocusEngine(bundle, backend="onnxruntime", padding="bucket")
    same_size = [images[0], np.ascontiguousarray(images[0][::-1]), images[1]]
    for mode in ("autofocus", "sniper"):
        batched = engine.detect_batch(same_size, mode=mode)
        stats = engine.last_stats
        assert stats["images"] == 3
        singles = [engine(im, mode=mode) for im in same_size]
        for b, s in zip(batched, singles):
            np.testing.assert_allclose(b.boxes, s.boxes, atol=1e-3)
            np.testing.assert_allclose(b.scores, s.scores, atol=1e-5)
            np.testing.assert_array_equal(b.labels, s.labels)
            for cb, cs in zip(b.chips, s.chips):
                np.testing.assert_allclose(cb, cs, atol=1e-3)
    # Scale 1 of the two same-size images shares one batch (max batch 2 per bucket): 2 batches, not 3.
    engine.detect_batch(same_size, mode="single")
    assert sum(engine.last_stats["batches"].values()) == 2
    # max_batch replaces the bundle's limit: 3 in one batch; 1 a batch; the same detections either way.
    engine.detect_batch(same_size, mode="single", padding="shared", max_batch=3)
    assert sum(engine.last_stats["batches"].values()) == 1
    one = engine.detect_batch(same_size, mode="autofocus", max_batch=1)
    for b, s in zip(engine.detect_batch(same_size, mode="autofocus"), one):
        np.testing.assert_allclose(b.boxes, s.boxes, atol=1e-3)
        np.testing.assert_array_equal(b.labels, s.labels)
    assert engine.detect_batch([]) == []


def test_padded_decode_gives_the_same_detections(bundle, images):
    """padded_decode (the CUDA default: no host read of each batch's candidate count) leaves its empty
    rows out of stacking, painting and Soft-NMS: the same detections and chips as the compact decode."""
    engine = AutoFocusEngine(bundle, backend="onnxruntime", device="cpu")
    assert not engine.params.padded_decode
    guided = {"chip_params": [{"box_score": 0.1}] * 2}  # painting, too
    for mode, overrides in (("autofocus", {}), ("autofocus", guided), ("sniper", {}), ("single", {"scale": 2})):
        compact = engine.detect_batch(images[:3], mode=mode, **overrides)
        padded = engine.detect_batch(images[:3], mode=mode, padded_decode=True, **overrides)
        for c, p in zip(compact, padded):
            assert len(c) > 0
            np.testing.assert_array_equal(p.boxes, c.boxes)
            np.testing.assert_array_equal(p.scores, c.scores)
            np.testing.assert_array_equal(p.labels, c.labels)
            for pc, cc in zip(p.chips, c.chips):
                np.testing.assert_array_equal(pc, cc)


# ------------------------------------------------------------------------------------ overrides

def test_overrides_per_engine_and_per_call(bundle, images):
    image = images[0]
    engine = AutoFocusEngine(bundle, backend="onnxruntime", max_detections=5)
    assert len(engine(image, mode="sniper")) == 5
    assert len(engine(image, mode="sniper", max_detections=3)) == 3
    assert len(engine(image, mode="sniper")) == 5  # a call's overrides do not stay
    strict = engine(image, mode="single", decode={"score_threshold": 0.9})
    assert len(strict) == 0
    hard = engine(image, mode="single", max_detections=200, soft_nms={"method": "hard", "iou_threshold": 0.0})
    soft = engine(image, mode="single", max_detections=200)
    assert 0 < len(hard) < len(soft)
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['colour'\]"):
        engine(image, colour="red")
    with pytest.raises(TypeError, match="unknown parameter"):
        AutoFocusEngine(bundle, backend="onnxruntime", sigma=0.5)
    with pytest.raises(ValueError, match="soft_nms: unknown key"):
        engine(image, soft_nms={"sigmaa": 0.5})
    with pytest.raises(ValueError, match="scale: expected 1..3"):
        engine(image, mode="single", scale=4)
    with pytest.raises(ValueError, match="valid_ranges: expected one"):
        engine(image, scales=TEST_SCALES[:2])
    with pytest.raises(ValueError, match="soft_nms method"):
        engine(image, soft_nms={"method": "box"})
    with pytest.raises(ValueError, match="dilation"):
        engine(image, chip_params=[{"dilation": 2}])
    with pytest.raises(ValueError, match="padding"):
        engine(image, padding="none")
    with pytest.raises(TypeError, match="chips_on_host"):
        engine(image, chips_on_host="yes")
    with pytest.raises(TypeError, match="padded_decode"):
        engine(image, padded_decode=1)
    two = engine(image, scales=TEST_SCALES[:2], valid_ranges=[[0, None], [0, 40]], chip_params=[{}])
    _check_valid(two, image.shape[:2], 5)
    assert len(engine.last_stats["scales"]) == 2


# ------------------------------------------------------------------------------------ inputs

def test_image_conversions(engine, images, tmp_path):
    image = images[0]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    as_bgr = engine(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), mode="single")
    for variant in (gray, gray[:, :, None]):
        _assert_same(engine(variant, mode="single"), (as_bgr.boxes, as_bgr.scores, as_bgr.labels))
    want = engine(image, mode="single")
    bgra = np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], 2)
    _assert_same(engine(bgra, mode="single"), (want.boxes, want.scores, want.labels))
    _assert_same(engine(image.astype(np.uint16) * 257, mode="single"), (want.boxes, want.scores, want.labels))
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), image)
    _assert_same(engine(path, mode="single"), (want.boxes, want.scores, want.labels))
    _assert_same(engine(str(path), mode="single"), (want.boxes, want.scores, want.labels))
    path16 = tmp_path / "image16.png"
    cv2.imwrite(str(path16), image.astype(np.uint16) * 257)
    _assert_same(engine(path16, mode="single"), (want.boxes, want.scores, want.labels))


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (31, 17), (2, 600), (900, 4)])
def test_tiny_and_extreme_images(engine, shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    for mode in ("autofocus", "sniper"):
        det = engine(image, mode=mode)
        _check_valid(det, shape)
        assert engine.last_stats["scales"][0]["pixels"] >= 1


def test_bad_inputs_name_the_problem(engine, bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        engine(tmp_path / "nothere.png")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        engine(corrupt)
    empty_file = tmp_path / "empty.png"
    empty_file.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png"):
        engine(empty_file)
    with pytest.raises(ValueError, match="image: empty image"):
        engine(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(TypeError, match="image: expected dtype uint8"):
        engine(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="image: expected an HxW"):
        engine(np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(ValueError, match="20000"):
        engine(np.zeros((20001, 2, 3), np.uint8))
    with pytest.raises(TypeError, match="image: expected a file path"):
        engine([[1, 2, 3]])
    with pytest.raises(TypeError, match="images: expected a list"):
        engine.detect_batch(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(TypeError, match=r"images\[1\]: expected dtype"):
        engine.detect_batch([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.int32)])
    with pytest.raises(ValueError, match="mode: expected one of"):
        engine(np.zeros((10, 10, 3), np.uint8), mode="fast")
    with pytest.raises(ValueError, match="backend: expected 'auto' or one of"):
        AutoFocusEngine(bundle, backend="openvino")
    with pytest.raises(BundleError, match="does not exist"):
        AutoFocusEngine(tmp_path / "no_bundle")


def test_incomplete_bundles_are_refused(bundle, tmp_path):
    import shutil
    for broken, what in (("bundle.json", "bundle.json is missing"), ("model.onnx", "model.onnx")):
        folder = tmp_path / broken
        shutil.copytree(bundle.folder, folder)
        (folder / broken).unlink()
        with pytest.raises(BundleError, match=what):
            AutoFocusEngine(folder)


# ------------------------------------------------------------------------------------ CLI

def test_cli_writes_coco_results_and_drawings(bundle, images, tmp_path, capsys):
    from runtime.__main__ import main
    from runtime.drawings import drawing_name
    from runtime.inputs import Item
    paths = []
    for i, image in enumerate(images[:2]):
        paths.append(tmp_path / f"val_{i}.png")
        cv2.imwrite(str(paths[-1]), image)
    out = tmp_path / "results.json"
    assert main([str(p) for p in paths] + ["--bundle", str(bundle.folder), "--mode", "sniper", "--out", str(out),
                                           "--viz", str(tmp_path / "viz"), "--backend", "onnxruntime"]) == 0
    results = json.loads(out.read_text())
    engine = AutoFocusEngine(bundle, backend="onnxruntime")
    want = engine(paths[0], mode="sniper")
    first = [r for r in results if r["image_id"] == str(paths[0])]
    assert len(first) == len(want)
    assert [r["category_id"] for r in first] == (want.labels + 1).tolist()
    np.testing.assert_allclose([r["bbox"] for r in first],
                               np.c_[want.boxes[:, :2], want.boxes[:, 2:] - want.boxes[:, :2]], atol=1e-3)
    for p in paths:
        drawn = cv2.imread(str(tmp_path / "viz" / drawing_name(Item(str(p), str(p)))))
        assert drawn is not None and drawn.shape == cv2.imread(str(p)).shape
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"images": [{"id": 7, "file_name": "images/val_0.png"}],
                               "categories": [{"id": 10 + i, "name": c} for i, c in enumerate(bundle.classes)]}))
    out = tmp_path / "with_ids.json"
    assert main([str(paths[0]), "--bundle", str(bundle.folder), "--mode", "sniper", "--out", str(out),
                 "--annotations", str(ids)]) == 0
    results = json.loads(out.read_text())
    assert {r["image_id"] for r in results} == {7}
    assert [r["category_id"] for r in results] == (want.labels + 10).tolist()
    assert main([str(tmp_path / "missing.png"), "--bundle", str(bundle.folder)]) == 2
    assert "missing.png" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ CUDA

@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("padding,chips_on_host,padded_decode", [("bucket", False, False), ("shared", True, True)])
def test_cuda_engine_matches_cpu(bundle, images, backend, padding, chips_on_host, padded_decode):
    from runtime import backends
    reason = backends.unavailable_reason(backend, bundle, "cuda")
    if reason is not None:
        pytest.skip(reason)
    gpu = AutoFocusEngine(bundle, backend=backend, device="cuda", padding=padding, chips_on_host=chips_on_host,
                          padded_decode=padded_decode)
    gpu.count_host_syncs = True
    cpu = AutoFocusEngine(bundle, backend="onnxruntime", device="cpu", padding=padding)
    for mode in ("autofocus", "sniper"):
        for image in images:
            g, c = gpu(image, mode=mode), cpu(image, mode=mode)
            stats = gpu.last_stats
            assert stats["device"] == "cuda" and stats["host_syncs"] is not None and stats["host_syncs"] > 0
            # Same candidates up to fp32 kernel differences: compare the confident part.
            strong_g, strong_c = g.scores > 0.1, c.scores > 0.1
            np.testing.assert_allclose(np.sort(g.scores[strong_g]), np.sort(c.scores[strong_c]), atol=1e-3)
            for cg, cc in zip(g.chips, c.chips):
                np.testing.assert_allclose(cg, cc, atol=1e-2)


@needs_cuda
@pytest.mark.cuda
def test_cuda_batch_graphs_and_synced_stages(bundle, images):
    """detect_batch on CUDA (one Soft-NMS launch for all images) against the CPU engine image by image;
    CUDA graphs against eager; sync_stages' stage times."""
    from runtime import backends
    reason = backends.unavailable_reason("torch", bundle, "cuda")
    if reason is not None:
        pytest.skip(reason)
    cpu = AutoFocusEngine(bundle, backend="onnxruntime", device="cpu")
    graphs = AutoFocusEngine(bundle, backend="torch", device="cuda")
    eager = AutoFocusEngine(bundle, backend="torch", device="cuda", cuda_graphs=False)
    assert graphs.cuda_graphs and not eager.cuda_graphs
    for mode in ("autofocus", "sniper"):
        got, plain = graphs.detect_batch(images, mode=mode), eager.detect_batch(images, mode=mode)
        for g, e, image in zip(got, plain, images):
            c = cpu(image, mode=mode)
            for other in (e, c):
                strong_g, strong_o = g.scores > 0.1, other.scores > 0.1
                np.testing.assert_allclose(np.sort(g.scores[strong_g]), np.sort(other.scores[strong_o]), atol=1e-3)
    graphs.sync_stages = True
    graphs.detect_batch(images)
    stats = graphs.last_stats
    assert stats["synced_stages"] and sum(stats["seconds"][k] for k in ("network", "chips", "postprocess")) \
        <= stats["seconds"]["total"]


def test_cuda_graphs_option_is_checked(bundle):
    with pytest.raises(ValueError, match="cuda_graphs"):
        AutoFocusEngine(bundle, backend="onnxruntime", device="cpu", cuda_graphs=True)
    with pytest.raises(TypeError, match="cuda_graphs"):
        AutoFocusEngine(bundle, backend="onnxruntime", device="cpu", cuda_graphs="yes")
    assert not AutoFocusEngine(bundle, backend="torch", device="cpu").cuda_graphs


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda])])
@pytest.mark.parametrize("output,where,modes", [("scores", "scores", ("autofocus", "sniper")),
                                                ("ltrb", "ltrb", ("autofocus", "sniper")),
                                                ("focus", "probs", ("autofocus",))])
@pytest.mark.parametrize("padded_decode", [False, True])
def test_nan_network_outputs_are_refused(bundle, images, device, output, where, modes, padded_decode):
    """A network that returns NaN (a broken export, fp16 overflow) gets a clear error naming the output,
    not detections: decode's checks (on CUDA its kernels' flags: read with the count, or with padded
    decode at the call's end), focus_chips' for the focus maps."""
    engine = AutoFocusEngine(bundle, backend="torch", device=device, padded_decode=padded_decode)
    real = engine.infer

    def broken(batch):
        out = real(batch)
        return {**out, output: out[output] * float("nan")}

    engine.infer = broken
    for mode in modes:
        with pytest.raises(ValueError, match=f"{where}: contains NaN or inf"):
            engine(images[0], mode=mode)
    engine.infer = real
    assert len(engine(images[0])) > 0  # nothing left behind
