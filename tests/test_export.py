"""Export: ONNX (fp32, fp16) and torch.export programs against PyTorch, and build_engine end to end.

The reference is always the eager PyTorch network, an implementation independent of onnxruntime's
kernels. One randomly initialised bundle is built once for the module (the CLI, in process)."""
import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from export import build_engine
from export.buckets import MAX_BUCKETS
from export.export_onnx import (FP32_TOLERANCE, OUTPUT_NAMES, ParityError, check_fp16_parity, check_parity,
                                check_torch_program_parity, compare_outputs, export_onnx)
from runtime.bundle import CASCADE_KEYS, load_bundle

SHAPES = [(1, 3, 64, 96), (2, 3, 128, 128), (3, 3, 96, 160)]  # 3 shapes, batch sizes 1, 2, 3


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "default"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = build_engine.main(["--random-init", "--out", str(out), "--timing-cache", str(out.parent / "tc")])
    return out, code, stdout.getvalue()


@pytest.fixture(scope="module")
def model():
    return build_engine.load_network(random_init=True, seed=0)[0]


def test_cli_writes_a_valid_bundle(built):
    out, code, printed = built
    assert code == 0, printed
    b = load_bundle(out)
    assert {"model.onnx", "model_fp16.onnx", "model.pt2"} <= set(b.artefacts)
    assert b.classes and len(b.buckets) == len(b.max_batch) <= MAX_BUCKETS
    assert b.parity["onnx_fp32"]["shapes"] >= 3
    assert all(b.parity["onnx_fp32"][k] <= FP32_TOLERANCE for k in OUTPUT_NAMES)
    assert b.build["random_init"] is True
    # The cascade's parameters are the shipped configuration's (read here as plain JSON), not the paper's.
    inference = json.loads((Path(build_engine.__file__).parents[1] / "model/configs/default.json").read_text())["inference"]
    assert {k: getattr(b, k) for k in CASCADE_KEYS} == {k: inference[k] for k in CASCADE_KEYS}
    reason = build_engine.tensorrt_unavailable_reason()
    if reason is not None:
        lines = [l for l in printed.splitlines() if "no TensorRT engine built" in l]
        assert len(lines) == 1 and reason in lines[0]
        assert b.engines == [] and not list(out.glob("*.plan"))
    for i in range(1, 8):
        assert f"[{i}/7]" in printed
    assert not list(out.parent.glob(".*building"))  # the work folder is gone


def test_onnx_graph_contract(built):
    proto = onnx.load(str(built[0] / "model.onnx"))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"] and dims[1].dim_value == 3
    for out in proto.graph.output:
        assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_onnx_parity(built, model):
    report = check_parity(model, built[0] / "model.onnx", SHAPES)
    assert report["shapes"] == 3
    for name in OUTPUT_NAMES:
        assert report[name] <= FP32_TOLERANCE
    # Independent of check_parity's own comparison: ltrb/focus have no peak step, compare directly.
    import onnxruntime as ort
    sess = ort.InferenceSession(str(built[0] / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 160, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x, export=True)
    got = dict(zip(OUTPUT_NAMES, sess.run(None, {"image": x.numpy()})))
    for name in ("ltrb", "focus"):
        np.testing.assert_allclose(got[name], ref[name].numpy(), atol=FP32_TOLERANCE, rtol=0)
    assert got["scores"].shape == (2, len(build_engine.load_network(random_init=True)[1]["classes"]), 20, 8)


def test_fp16_onnx_parity(built, model):
    proto = onnx.load(str(built[0] / "model_fp16.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    report = check_fp16_parity(model, built[0] / "model_fp16.onnx", SHAPES)
    assert report["focus"] <= 1e-2 and report["scores"] <= 1e-2 and report["ltrb"] <= 1e-2


def test_torch_program_round_trip(built, model):
    report = check_torch_program_parity(model, built[0] / "model.pt2", [(2, 3, 96, 224), (1, 3, 64, 64)])
    assert all(report[k] <= FP32_TOLERANCE for k in OUTPUT_NAMES)
    program = torch.export.load(str(built[0] / "model.pt2")).module()
    with pytest.raises(Exception):  # the H = 32 * h32 constraint is part of the program
        program(torch.zeros(1, 3, 100, 96))


def test_parity_check_catches_a_wrong_model(built, model):
    wrong = build_engine.load_network(random_init=True, seed=0)[0]
    with torch.no_grad():
        wrong.focus_out.bias[1] += 1e-2  # a small, real difference in one head (softmax-visible)
    with pytest.raises(ParityError, match="'focus'"):
        check_parity(wrong, built[0] / "model.onnx", SHAPES[:1])


def test_compare_outputs_tie_rule():
    # 1 x 1 x 1 x 3 map: cells 0 and 1 tie (pre-peak 0.5 vs 0.5 + 1e-7), cell 2 is far lower.
    pre = np.array([[[[0.5, 0.5 + 1e-7, 0.1]]]], np.float64)
    ref = {"scores": np.array([[[[0.0, 0.5 + 1e-7, 0.0]]]]), "ltrb": np.zeros((1, 4, 1, 3)),
           "focus": np.zeros((1, 2, 1, 1))}
    tie_swap = dict(ref, scores=np.array([[[[0.5, 0.0, 0.0]]]]))
    report = compare_outputs(ref, tie_swap, 1e-4, pre_peak=pre)
    assert report["scores"] == 0.0 and report["scores_tie_flips"] == 2
    not_a_tie = dict(ref, scores=np.array([[[[0.0, 0.5 + 1e-7, 0.1]]]]))  # cell 2 is no peak
    with pytest.raises(ParityError, match="'scores'"):
        compare_outputs(ref, not_a_tie, 1e-4, pre_peak=pre)
    with pytest.raises(ParityError, match="'ltrb'"):
        compare_outputs(ref, dict(ref, ltrb=np.full((1, 4, 1, 3), 2e-4)), 1e-4, pre_peak=pre)


def test_export_rejects_bad_arguments(tmp_path, model):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", opset=13)
    with pytest.raises(TypeError, match="model"):
        export_onnx("not a model", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="shapes"):
        check_parity(model, tmp_path / "m.onnx", [(1, 3, 100, 96)])


def test_corrupt_and_missing_checkpoint(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(ValueError, match="broken.pt"):
        build_engine.build_bundle(checkpoint=bad, out=tmp_path / "b", log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="absent.pt.*--random-init"):
        build_engine.build_bundle(checkpoint=tmp_path / "absent.pt", out=tmp_path / "b", log=lambda s: None)
    assert not (tmp_path / "b").exists()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert build_engine.main(["--checkpoint", str(bad), "--out", str(tmp_path / "b")]) == 1
    assert "broken.pt" in err.getvalue()


class _RunsCodeWhenUnpickled:
    """A pickle that creates a file when loaded: what torch.load(weights_only=False) would let a
    downloaded 'checkpoint' do."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_loading_runs_no_code(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "classes": [], "payload": _RunsCodeWhenUnpickled(marker)}, evil)
    with pytest.raises(ValueError, match="evil.pt"):
        build_engine.build_bundle(checkpoint=evil, out=tmp_path / "b", log=lambda s: None)
    assert not marker.exists(), "loading the checkpoint ran code from it"
    picture = tmp_path / "photo.jpg"
    cv2.imwrite(str(picture), np.zeros((8, 8, 3), np.uint8))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert build_engine.main(["--checkpoint", str(picture), "--out", str(tmp_path / "b")]) == 1
    assert "photo.jpg" in err.getvalue() and "not a readable checkpoint" in err.getvalue()
    assert not (tmp_path / "b").exists()


def test_unsupported_options(tmp_path):
    with pytest.raises(ValueError, match="int8 needs explicit quantization"):
        build_engine.build_bundle(precision="int8", random_init=True, out=tmp_path / "b")
    with pytest.raises(ValueError, match="--buckets"):
        build_engine.parse_buckets("512x500", [], [])
    with pytest.raises(ValueError, match="max_batch"):
        build_engine.build_bundle(max_batch=0, random_init=True, out=tmp_path / "b")


@pytest.mark.skipif(not build_engine.DEFAULT_CHECKPOINT.is_file(),
                    reason="the shipped checkpoint model/checkpoints/default.pt is not there yet")
def test_shipped_model_exports_with_parity(tmp_path):
    shipped, _ = build_engine.load_network(build_engine.DEFAULT_CHECKPOINT)
    export_onnx(shipped, tmp_path / "model.onnx")
    report = check_parity(shipped, tmp_path / "model.onnx", SHAPES)
    assert all(report[k] <= FP32_TOLERANCE for k in OUTPUT_NAMES)


def test_an_inference_coarse_scale_reaches_the_bundle_and_its_buckets():
    """inference "coarse_scale" (optional; runtime/params.py) goes to bundle.json, and the default buckets
    hold its whole images (here larger than any scale, so only its own buckets can)."""
    from export.build_engine import cascade_parameters, parse_buckets
    from model.config import load_config
    config = load_config()
    inference = dict(config["inference"], coarse_scale=None)
    assert "coarse_scale" not in cascade_parameters(config, inference)
    inference["coarse_scale"] = [1500, 2200]
    fields = cascade_parameters(config, inference)
    assert fields["coarse_scale"] == [1500, 2200]
    buckets = parse_buckets(None, fields["scales"], fields["chip_params"], fields["coarse_scale"])
    assert any(h >= 1500 and w >= 2200 for h, w in buckets) and any(h >= 2200 and w >= 1500 for h, w in buckets)
