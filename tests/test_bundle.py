"""runtime.bundle: the bundle.json schema round trip and every refusal load_bundle must make."""
import hashlib
import json

import pytest

from runtime.bundle import PAPER_PARAMETERS, SCHEMA_VERSION, Bundle, BundleError, load_bundle, write_bundle

BUCKETS = [(480, 512), (512, 480), (576, 576)]


@pytest.fixture
def bundle_dir(tmp_path):
    # The schema does not look inside artefacts: plain bytes stand in for the network files here.
    (tmp_path / "model.onnx").write_bytes(b"onnx bytes" * 100)
    (tmp_path / "model_fp16.onnx").write_bytes(b"fp16 bytes" * 50)
    (tmp_path / "model.pt2").write_bytes(b"pt2 bytes" * 70)
    write_bundle(tmp_path, classes=["car", "person"], buckets=BUCKETS, max_batch=[8, 8, 6],
                 precision="fp16", parity={"onnx_fp32": {"scores": 1e-7}}, **PAPER_PARAMETERS)
    return tmp_path


def test_round_trip(bundle_dir):
    b = load_bundle(bundle_dir)
    assert isinstance(b, Bundle)
    assert b.schema_version == SCHEMA_VERSION
    assert b.classes == ["car", "person"]
    assert b.buckets == [list(x) for x in BUCKETS]
    assert b.max_batch == [8, 8, 6] and b.precision == "fp16"
    assert set(b.artefacts) == {"model.onnx", "model_fp16.onnx", "model.pt2"}
    for name, info in b.artefacts.items():  # checksums against hashlib directly
        data = (bundle_dir / name).read_bytes()
        assert info == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    # docs/design.md's reference values (the paper's), as PAPER_PARAMETERS holds them, round-trip.
    assert b.scales == [[480, 512], [800, 1280], [1400, 2000]]
    assert b.valid_ranges == [[75, None], [32, 180], [0, 75]]
    assert b.chip_params == [{"threshold": 0.02, "dilation": 3, "min_size": 16},
                             {"threshold": 0.2, "dilation": 3, "min_size": 20}]
    assert b.soft_nms["method"] == "gaussian" and b.soft_nms["sigma"] == 0.55
    assert b.soft_nms["score_threshold"] == 0.001 and b.max_detections == 200
    assert b.input["channel_order"] == "RGB" and b.input["image_order"] == "BGR"
    assert b.input["size_divisor"] == 32 and b.strides == {"detection": 8, "focus": 16}
    assert [o["name"] for o in b.output_contract["outputs"]] == ["scores", "ltrb", "focus"]
    assert {"torch", "onnx", "onnxruntime", "tensorrt"} <= set(b.versions)
    assert b.path("model.onnx") == (bundle_dir / "model.onnx").resolve()
    # What is on disk is plain JSON with the same content.
    on_disk = json.loads((bundle_dir / "bundle.json").read_text())
    assert on_disk == b.to_dict()


def test_tampered_artefact(bundle_dir):
    data = bytearray((bundle_dir / "model.onnx").read_bytes())
    data[5] ^= 1  # same size, one bit changed
    (bundle_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx.*sha256.*build_engine\.py"):
        load_bundle(bundle_dir)


def test_missing_artefact(bundle_dir):
    (bundle_dir / "model.pt2").unlink()
    with pytest.raises(BundleError, match=r"model\.pt2.*missing"):
        load_bundle(bundle_dir)


def _edit(bundle_dir, fn):
    meta = bundle_dir / "bundle.json"
    d = json.loads(meta.read_text())
    fn(d)
    meta.write_text(json.dumps(d))


def test_wrong_schema_version(bundle_dir):
    _edit(bundle_dir, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match="schema_version"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("key", ["classes", "buckets", "scales", "chip_params", "artefacts", "soft_nms"])
def test_missing_key(bundle_dir, key):
    _edit(bundle_dir, lambda d: d.pop(key))
    with pytest.raises(BundleError, match=f"missing key.*{key}"):
        load_bundle(bundle_dir)


def test_bad_values(bundle_dir):
    _edit(bundle_dir, lambda d: d.update(buckets=[[500, 512]], max_batch=[1]))
    with pytest.raises(BundleError, match="multiples of size_divisor"):
        load_bundle(bundle_dir)


def test_coarse_scale_is_optional_and_checked(bundle_dir):
    assert load_bundle(bundle_dir).coarse_scale is None  # absent: AutoFocus's scale 1 is scales[0]
    _edit(bundle_dir, lambda d: d.update(coarse_scale=[570, 608]))
    assert load_bundle(bundle_dir).coarse_scale == [570, 608]
    for bad in ([608, 570], [570], [0, 608], "570x608", [570, True]):
        _edit(bundle_dir, lambda d: d.update(coarse_scale=bad))
        with pytest.raises(BundleError, match="coarse_scale"):
            load_bundle(bundle_dir)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        load_bundle(tmp_path)


def test_write_refuses_bad_input(tmp_path):
    with pytest.raises(BundleError, match="artefacts"):
        write_bundle(tmp_path, classes=["a"], buckets=BUCKETS, max_batch=[1, 1, 1], artefacts=["model.onnx"],
                     **PAPER_PARAMETERS)
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="max_batch"):
        write_bundle(tmp_path, classes=["a"], buckets=BUCKETS, max_batch=[1], **PAPER_PARAMETERS)
    with pytest.raises(TypeError, match="unknown bundle fields"):
        write_bundle(tmp_path, classes=["a"], buckets=BUCKETS, max_batch=[1, 1, 1], colour="red",
                     **PAPER_PARAMETERS)
    # The cascade's parameters have no default: leaving one out is an error naming it.
    for key in ("chip_params", "max_detections"):
        partial = {k: v for k, v in PAPER_PARAMETERS.items() if k != key}
        with pytest.raises(TypeError, match=f"missing bundle fields.*{key}"):
            write_bundle(tmp_path, classes=["a"], buckets=BUCKETS, max_batch=[1, 1, 1], **partial)
    assert not (tmp_path / "bundle.json").exists()
