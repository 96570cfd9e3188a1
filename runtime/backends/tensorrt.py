"""TensorRT backend (TensorRT 10/11 tensor API): the bundle's plan, one execution context per
optimization profile (= per chip bucket), torch CUDA tensors in and out.

Output ownership (runtime/backends/__init__.py): each profile owns preallocated output tensors sized
for its largest batch; a batch of N returns views of their first N items, which the next infer() on
that profile overwrites; they are valid until the next infer() call, as the contract says.

Memory: the contexts are created USER_MANAGED and share one activation block from torch's allocator,
sized for the largest profile (a STATIC context reserves that much each: 16 buckets were 16 times it).
Sharing is sound because the calls of one backend run in stream order: execute_async_v3 runs on torch's
current stream at the call, and a call on another stream than the last first waits for the last.
Tensor dtypes are read from the engine; every setter's result is checked. A plan records the TensorRT
version and GPU that built it (bundle.json); another version or GPU is a reason not to run here
(unavailable_reason), so backend="auto" passes over it with that reason instead of failing to load.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import INPUT_NAME, OUTPUT_NAMES, check_batch


def tensorrt_missing_reason() -> str | None:
    """None when the tensorrt package imports, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    return None


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can build or run here (the package and a CUDA GPU), else why not: the one such
    check (export/build_engine.py uses it; unavailable_reason adds the bundle's own conditions)."""
    import torch
    return tensorrt_missing_reason() or (None if torch.cuda.is_available() else "no CUDA GPU")


# TensorRT DataType names -> torch dtype names (read from the engine, never assumed).
TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


def unavailable_reason(bundle, device: str) -> str | None:
    if device != "cuda":
        return "TensorRT runs on CUDA only"
    if not bundle.engines:
        return "the bundle has no TensorRT engine (*.plan): build it where TensorRT and a GPU exist"
    # The GPU itself is checked by backend selection (backends.cuda_unavailable_reason).
    reason = tensorrt_missing_reason()
    if reason is not None:
        return reason
    import tensorrt as trt
    import torch
    return plan_mismatch(engine_info(bundle), trt.__version__, torch.cuda.get_device_name())


def engine_info(bundle) -> dict:
    """The bundle.json entry of the engine of the bundle's precision (the first where none matches)."""
    return next((e for e in bundle.engines if e.get("precision") == bundle.precision), bundle.engines[0])


def plan_mismatch(info: dict, tensorrt_version: str, gpu: str | None) -> str | None:
    """Why a plan built as `info` records (its "tensorrt" version, its "gpu" name) cannot load here, in
    one line; None when it can (or the entry does not say: loading then decides). A plan loads only
    with the TensorRT version that built it, on the GPU model it was built for."""
    built_version, built_gpu = info.get("tensorrt"), info.get("gpu")
    rebuild = "rebuild the bundle here (python export/build_engine.py)"
    if built_version is not None and str(built_version) != str(tensorrt_version):
        return f"{info.get('file', 'the plan')} was built by TensorRT {built_version}, this is {tensorrt_version}: {rebuild}"
    if built_gpu is not None and gpu is not None and built_gpu != gpu:
        return f"{info.get('file', 'the plan')} was built for a {built_gpu}, this GPU is a {gpu}: {rebuild}"
    return None


def torch_dtype(trt_dtype):
    """The torch dtype of a TensorRT DataType (or its name)."""
    import torch
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in TORCH_DTYPES:
        raise RuntimeError(f"TensorRT tensor dtype {name} has no torch equivalent here ({sorted(TORCH_DTYPES)})")
    return getattr(torch, TORCH_DTYPES[name])


@dataclass
class _Profile:
    index: int
    min_shape: tuple
    max_shape: tuple
    context: object = None
    outputs: dict = field(default_factory=dict)   # name -> (max_batch, ...) torch tensor
    input_shape: tuple = None                      # the shape last set on the context
    input_ptr: int = None                          # the input address last set on the context
    views: dict = field(default_factory=dict)      # name -> the outputs for input_shape (views of outputs)


class Backend:
    name = "tensorrt"
    io = "torch"
    fixed_shapes = True

    def __init__(self, bundle, device: str = "cuda"):
        if device != "cuda":
            raise ValueError(f"device: TensorRT runs on 'cuda' only, got {device!r}")
        self.bundle, self.device = bundle, device
        self.engine = None
        self.profiles: list[_Profile] = []
        self.dtypes: dict = {}          # tensor name -> torch dtype, from the engine
        self._scratch = None            # the contexts' shared activation memory (a torch uint8 tensor)
        self._last_stream = None        # the stream of the last execute (shared scratch: stream order)

    def load(self):
        import tensorrt as trt
        import torch
        info = engine_info(self.bundle)
        plan = self.bundle.path(info["file"])
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan}: TensorRT {trt.__version__} could not load this engine (engines load only "
                               "with the TensorRT version and GPU that built them): rebuild the bundle here with "
                               "`python export/build_engine.py`, or use backend='onnxruntime'")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if sorted(names) != sorted((INPUT_NAME,) + OUTPUT_NAMES):
            raise RuntimeError(f"{plan}: I/O tensors {names}, expected {INPUT_NAME!r} and {OUTPUT_NAMES}")
        if self.engine.get_tensor_mode(INPUT_NAME) != trt.TensorIOMode.INPUT or any(
                self.engine.get_tensor_mode(n) != trt.TensorIOMode.OUTPUT for n in OUTPUT_NAMES):
            raise RuntimeError(f"{plan}: expected {INPUT_NAME!r} as the input and {OUTPUT_NAMES} as outputs")
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        if self.dtypes[INPUT_NAME] != torch.float32:
            raise RuntimeError(f"{plan}: input {INPUT_NAME!r} is {self.dtypes[INPUT_NAME]}, the runtime feeds float32 "
                               "(docs/contract.md): export with fp32 I/O")
        self.profiles = []
        for index in range(self.engine.num_optimization_profiles):
            lo, _opt, hi = self.engine.get_tensor_profile_shape(INPUT_NAME, index)
            self.profiles.append(_Profile(index, tuple(lo), tuple(hi)))
        # One activation block for every context: the largest profile's need (TensorRT >= 10.1 names it _v2).
        per_profile = getattr(self.engine, "get_device_memory_size_for_profile_v2", None) \
            or self.engine.get_device_memory_size_for_profile
        size = max(int(per_profile(p.index)) for p in self.profiles)
        self._scratch = torch.empty(max(size, 1), dtype=torch.uint8, device="cuda")
        return self

    def input_specs(self) -> list[dict]:
        return [{"name": INPUT_NAME, "profile": p.index, "min": list(p.min_shape), "max": list(p.max_shape),
                 "dtype": "float32"} for p in self.profiles]

    def _profile_for(self, shape) -> _Profile:
        for p in self.profiles:
            if all(lo <= s <= hi for s, lo, hi in zip(shape, p.min_shape, p.max_shape)):
                return p
        ranges = ", ".join(f"{p.min_shape}..{p.max_shape}" for p in self.profiles)
        raise ValueError(f"batch: shape {shape} fits no optimization profile of this engine ({ranges}); "
                         "pad inputs to a bundle bucket and split batches at its max_batch")

    def _prepare(self, p: _Profile, stream: int):
        import tensorrt as trt
        import torch
        p.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if p.context is None:
            raise RuntimeError(f"TensorRT: could not create an execution context for profile {p.index}")
        if hasattr(p.context, "set_device_memory"):  # TensorRT >= 10.1: address and size
            p.context.set_device_memory(self._scratch.data_ptr(), self._scratch.numel())
        else:
            p.context.device_memory = self._scratch.data_ptr()
        if not p.context.set_optimization_profile_async(p.index, stream):
            raise RuntimeError(f"TensorRT: could not select optimization profile {p.index}")
        # Output buffers for the profile's largest batch; their addresses never change.
        self._set_shape(p, p.max_shape)
        for name in OUTPUT_NAMES:
            shape = tuple(p.context.get_tensor_shape(name))
            p.outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            _check(p.context.set_tensor_address(name, p.outputs[name].data_ptr()), f"set_tensor_address({name!r})")

    def _set_shape(self, p: _Profile, shape):
        if not p.context.set_input_shape(INPUT_NAME, shape):
            raise RuntimeError(f"TensorRT rejected input shape {shape} for profile {p.index} "
                               f"({p.min_shape}..{p.max_shape})")
        p.input_shape = shape
        p.views = {}

    def infer(self, batch) -> dict:
        import torch
        if self.engine is None:
            raise RuntimeError("tensorrt backend: call load() first")
        if not (isinstance(batch, torch.Tensor) and batch.is_cuda):
            raise TypeError("batch: expected a CUDA torch tensor")
        check_batch(batch, self.bundle.input["size_divisor"])
        if batch.device != self._scratch.device:
            raise ValueError(f"batch: on {batch.device}, the engine was loaded on {self._scratch.device}")
        batch = batch.contiguous()
        shape = tuple(batch.shape)
        p = self._profile_for(shape)
        current = torch.cuda.current_stream(batch.device)
        stream = current.cuda_stream
        if self._last_stream is not None and self._last_stream != current:
            current.wait_stream(self._last_stream)  # the shared activation block is in use until then
        if p.context is None:
            self._prepare(p, stream)
        if p.input_shape != shape:
            self._set_shape(p, shape)
        if not p.views:  # TensorRT writes outputs densely from the buffer's start
            for name, buf in p.outputs.items():
                out_shape = tuple(p.context.get_tensor_shape(name))
                p.views[name] = buf.view(-1)[: _numel(out_shape)].view(out_shape)
        if p.input_ptr != batch.data_ptr():
            _check(p.context.set_tensor_address(INPUT_NAME, batch.data_ptr()), "set_tensor_address('image')")
            p.input_ptr = batch.data_ptr()
        if not p.context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT execution failed for input shape {shape}")
        self._last_stream = current
        # The runtime's ops read float32 (docs/contract.md): an engine with other output types gives copies.
        return {k: v if v.dtype == torch.float32 else v.float() for k, v in p.views.items()}

    def close(self):
        for p in self.profiles:
            p.context, p.outputs, p.views = None, {}, {}
        self.engine = None
        self._scratch = None
        self._last_stream = None

    def __enter__(self):
        return self if self.engine is not None else self.load()

    def __exit__(self, *exc):
        self.close()


def _check(ok, what: str):
    if not ok:
        raise RuntimeError(f"TensorRT: {what} failed")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
