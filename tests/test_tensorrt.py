"""TensorRT engine build (export/tensorrt_build.py): build a small two-profile engine, run it, compare
with PyTorch. Needs the `tensorrt` package and a CUDA GPU; skips with the reason elsewhere."""
import numpy as np
import pytest
import torch

from export.build_engine import tensorrt_unavailable_reason

REASON = tensorrt_unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.cuda]

BUCKETS = [(64, 96), (128, 128)]


@pytest.fixture(scope="module")
def engine_files(tmp_path_factory):
    from export.build_engine import load_network
    from export.export_onnx import export_onnx, export_onnx_fp16
    from export.tensorrt_build import build_engine
    d = tmp_path_factory.mktemp("trt")
    model = load_network(random_init=True, seed=0)[0]
    export_onnx(model, d / "model.onnx")
    export_onnx_fp16(d / "model.onnx", d / "model_fp16.onnx")
    infos = {}
    for precision, onnx_name in (("fp32", "model.onnx"), ("fp16", "model_fp16.onnx")):
        infos[precision] = build_engine(d / onnx_name, d / f"model_{precision}.plan", BUCKETS, [4, 2],
                                        workspace_mib=512, timing_cache_path=d / "timing.cache", log=lambda s: None)
    return d, model, infos


def _run(engine, profile: int, x: torch.Tensor) -> dict:
    ctx = engine.create_execution_context()
    stream = torch.cuda.current_stream()
    ctx.set_optimization_profile_async(profile, stream.cuda_stream)
    ctx.set_input_shape("image", tuple(x.shape))
    x = x.cuda().contiguous()
    ctx.set_tensor_address("image", x.data_ptr())
    outputs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if name == "image":
            continue
        t = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
        ctx.set_tensor_address(name, t.data_ptr())
        outputs[name] = t
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return {k: v.cpu().numpy() for k, v in outputs.items()}


@pytest.mark.parametrize("precision,tol", [("fp32", 2e-3), ("fp16", 2e-2)])  # fp32 engines may use TF32
def test_engine_runs_every_profile_and_matches_pytorch(engine_files, precision, tol):
    from export.tensorrt_build import check_plan
    d, model, infos = engine_files
    info = infos[precision]
    assert info["profiles"] == {"0": [64, 96, 4], "1": [128, 128, 2]}
    assert (d / "timing.cache").is_file()
    engine = check_plan(d / f"model_{precision}.plan")
    assert engine.num_optimization_profiles == 2
    for profile, (h, w) in enumerate(BUCKETS):
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(profile))
        with torch.no_grad():
            ref = model(x, export=True)
        got = _run(engine, profile, x)
        for name in ("ltrb", "focus"):
            scale = np.maximum(1.0, np.abs(ref[name].numpy()))
            assert np.max(np.abs(got[name] - ref[name].numpy()) / scale) <= tol, name
        # scores: peaks may move at near-ties; the value at agreeing peaks must match.
        both = (got["scores"] > 0) & (ref["scores"].numpy() > 0)
        assert both.mean() > 0 and np.max(np.abs(got["scores"] - ref["scores"].numpy())[both]) <= tol


def test_check_plan_rejects_foreign_bytes(tmp_path):
    from export.tensorrt_build import TensorRTError, check_plan
    bad = tmp_path / "other.plan"
    bad.write_bytes(b"\x00" * 1024)
    with pytest.raises(TensorRTError, match="other.plan"):
        check_plan(bad)


def test_build_engine_reports_parser_errors(tmp_path):
    from export.tensorrt_build import TensorRTError, build_engine
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(TensorRTError, match="could not parse"):
        build_engine(broken, tmp_path / "x.plan", BUCKETS, 2, 256, None, log=lambda s: None)
