"""TensorRT engine build from the exported ONNX: the thin part that touches TensorRT (10.x / 11.x API).

One optimization profile per chip bucket (min batch 1, opt, max batch), a strongly typed network
(precision comes from the ONNX itself: model.onnx -> fp32 engine, model_fp16.onnx -> fp16 engine;
TensorRT 11 removed the weakly typed FP16 builder flag), and a timing cache that is loaded before and
saved after the build so rebuilds are fast. Functions raise; nothing here exits or prints beyond the
TensorRT logger.
"""
from __future__ import annotations

import os
from pathlib import Path

from runtime.bundle import INPUT_NAME


class TensorRTError(RuntimeError):
    """TensorRT could not parse, build or load an engine; the message says why."""


def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTError(f"tensorrt is not installed ({e}): install the `tensorrt` wheel matching your "
                            "CUDA, or run the bundle with onnxruntime") from e
    return trt


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def gpu_name() -> str | None:
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except (ImportError, RuntimeError):
        return None


def build_engine(onnx_path, plan_path, buckets, max_batch, workspace_mib: int = 2048,
                 timing_cache_path=None, log=print) -> dict:
    """Builds a serialized TensorRT engine (plan) from `onnx_path` with one profile per bucket.

    buckets: [(h, w), ...]; max_batch: an int or one int per bucket (the profile's max batch; opt is
    half of it, at least 1). workspace_mib: WORKSPACE memory pool limit. timing_cache_path: file
    read if it exists and written after the build (None: no persistent cache).
    Returns {"tensorrt": version, "gpu": name, "profiles": {index: [h, w, max_batch]}, "io": [...]}."""
    trt = _trt()
    buckets = [(int(h), int(w)) for h, w in buckets]
    if not buckets:
        raise ValueError("buckets: expected at least one (height, width)")
    batches = [int(max_batch)] * len(buckets) if isinstance(max_batch, int) else [int(b) for b in max_batch]
    if len(batches) != len(buckets) or min(batches) < 1:
        raise ValueError(f"max_batch: expected an int >= 1 or one per bucket ({len(buckets)}), got {max_batch}")
    if workspace_mib < 1:
        raise ValueError(f"workspace_mib: expected >= 1, got {workspace_mib}")
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise ValueError(f"onnx_path: no such file {onnx_path}")

    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # required in 10.x for the fp16 ONNX; deprecated no-op in 11.x
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"onnx_path: TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errors))

    io = []
    for kind, count, get in (("input", network.num_inputs, network.get_input),
                             ("output", network.num_outputs, network.get_output)):
        for i in range(count):
            t = get(i)
            io.append({"kind": kind, "name": t.name, "shape": list(t.shape), "dtype": str(t.dtype)})
            log(f"  network {kind} {t.name}: shape {tuple(t.shape)} dtype {t.dtype}")
    if [d["name"] for d in io if d["kind"] == "input"] != [INPUT_NAME]:
        raise TensorRTError(f"onnx_path: expected one input named {INPUT_NAME!r}, got {io}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    cache_bytes = b""
    if timing_cache_path is not None and Path(timing_cache_path).is_file():
        cache_bytes = Path(timing_cache_path).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    profiles = {}
    for index, ((h, w), mb) in enumerate(zip(buckets, batches)):
        profile = builder.create_optimization_profile()
        opt = max(1, mb // 2)
        profile.set_shape(INPUT_NAME, (1, 3, h, w), (opt, 3, h, w), (mb, 3, h, w))
        config.add_optimization_profile(profile)
        profiles[str(index)] = [h, w, mb]

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTError(f"TensorRT failed to build an engine from {onnx_path} (see the log above; "
                            f"try a larger --workspace than {workspace_mib} MiB or smaller --max-batch)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_suffix(plan_path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(memoryview(plan))
    os.replace(tmp, plan_path)
    if timing_cache_path is not None:
        Path(timing_cache_path).parent.mkdir(parents=True, exist_ok=True)
        Path(timing_cache_path).write_bytes(memoryview(config.get_timing_cache().serialize()))
    return {"tensorrt": trt.__version__, "gpu": gpu_name(), "profiles": profiles, "io": io}


def check_plan(plan_path):
    """Deserialises a plan; returns the ICudaEngine. A plan built by another TensorRT version or for
    another GPU does not deserialise: that raises TensorRTError saying to rebuild it here."""
    trt = _trt()
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise ValueError(f"plan_path: no such file {plan_path}")
    runtime = trt.Runtime(_logger(trt))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise TensorRTError(
            f"plan_path: {plan_path} could not be loaded by TensorRT {trt.__version__} on "
            f"{gpu_name() or 'this machine'}; engines only load with the TensorRT version and GPU that built "
            "them: rebuild with `python export/build_engine.py`")
    return engine
