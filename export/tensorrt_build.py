"""TensorRT engine build from the exported ONNX: the thin part that touches TensorRT (10.x / 11.x API).

One optimization profile per chip bucket (min batch 1, opt = max batch: see profile_shapes), a strongly
typed network (precision comes from the ONNX itself: model.onnx -> fp32 engine, model_fp16.onnx -> fp16
engine; TensorRT 11 removed the weakly typed FP16 builder flag) with TF32 off (an fp32 engine computes in
fp32), and a timing cache that is loaded before and saved after the build so rebuilds are fast. A timing
cache holds measurements of one GPU under one TensorRT version: its file name carries both
(timing_cache_file), a cache TensorRT rejects is replaced by an empty one (logged), and it is written
atomically. Functions raise; nothing here exits or prints beyond the TensorRT logger and `log`.
"""
from __future__ import annotations

import os
import re
import tempfile
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
        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except (ImportError, RuntimeError):
        return None


def timing_cache_file(folder, gpu: str | None, tensorrt_version: str) -> Path:
    """Where the timing cache of this GPU model and TensorRT version lives in `folder`: one file per
    (GPU, version), so a build never loads another GPU's measurements."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu or 'unknown-gpu'}_trt{tensorrt_version}").strip("-")
    return Path(folder) / f"timing_cache_{slug}.bin"


def profile_shapes(height: int, width: int, max_batch: int) -> tuple:
    """(min, opt, max) input shapes of a bucket's profile. opt is the max batch: the engine's callers fill
    batches to the max (the cascade's shared padding packs every input that fits a bucket into it, and
    whole images of a detect_batch call come max_batch at a time), so that is where kernels are tuned."""
    if max_batch < 1:
        raise ValueError(f"max_batch: expected >= 1, got {max_batch}")
    return (1, 3, height, width), (max_batch, 3, height, width), (max_batch, 3, height, width)


def write_atomically(path, data) -> None:
    """data written to a temporary file beside path, then renamed over it: a reader sees the old file
    or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_engine(onnx_path, plan_path, buckets, max_batch, workspace_mib: int = 2048,
                 timing_cache_path=None, log=print, allow_tf32: bool = False) -> dict:
    """Builds a serialized TensorRT engine (plan) from `onnx_path` with one profile per bucket.

    buckets: [(h, w), ...]; max_batch: an int or one int per bucket (the profile's max batch, also its
    opt: profile_shapes). workspace_mib: WORKSPACE memory pool limit. timing_cache_path: file read if
    it exists and written after the build (None: no persistent cache; timing_cache_file names one per
    GPU and TensorRT version). allow_tf32: let fp32 layers use TF32 (off: fp32 means fp32).
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
    if not allow_tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    cache_bytes = b""
    if timing_cache_path is not None and Path(timing_cache_path).is_file():
        cache_bytes = Path(timing_cache_path).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # Another GPU's or TensorRT version's cache: build without it (and replace it afterwards).
        log(f"  timing cache {timing_cache_path} does not match this GPU / TensorRT {trt.__version__}; "
            "starting an empty one")
        cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise TensorRTError("TensorRT refused an empty timing cache")

    profiles = {}
    for index, ((h, w), mb) in enumerate(zip(buckets, batches)):
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, *profile_shapes(h, w, mb))
        if config.add_optimization_profile(profile) < 0:
            raise TensorRTError(f"TensorRT refused the optimization profile of bucket {h}x{w} (max batch {mb})")
        profiles[str(index)] = [h, w, mb]

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTError(f"TensorRT failed to build an engine from {onnx_path} (see the log above; "
                            f"try a larger --workspace than {workspace_mib} MiB or smaller --max-batch)")
    write_atomically(plan_path, plan)
    if timing_cache_path is not None:
        built_cache = config.get_timing_cache()
        if built_cache is None:
            log(f"  TensorRT returned no timing cache; {timing_cache_path} left as it was")
        else:
            write_atomically(timing_cache_path, built_cache.serialize())
    return {"tensorrt": trt.__version__, "gpu": gpu_name(), "profiles": profiles, "io": io,
            "tf32": bool(allow_tf32)}


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
