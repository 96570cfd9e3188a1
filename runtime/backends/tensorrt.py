"""TensorRT backend (TensorRT 10/11 tensor API): the bundle's plan, one execution context per
optimization profile (= per chip bucket), torch CUDA tensors in and out.

Output ownership (runtime/backends/__init__.py): each profile owns preallocated output tensors sized
for its largest batch; a batch of N returns views of their first N items, which the next infer() on
that profile overwrites; they are valid until the next infer() call, as the contract says. Shapes and addresses are
set only when they change; execute_async_v3 runs on torch's current stream (no host sync).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import OUTPUT_NAMES, check_batch

INPUT_NAME = "image"


def unavailable_reason(bundle, device: str) -> str | None:
    if device != "cuda":
        return "TensorRT runs on CUDA only"
    if not bundle.engines:
        return "the bundle has no TensorRT engine (*.plan): build it where TensorRT and a GPU exist"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    return None


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

    def load(self):
        import tensorrt as trt
        # The engine of the bundle's precision where there are several.
        info = next((e for e in self.bundle.engines if e.get("precision") == self.bundle.precision),
                    self.bundle.engines[0])
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
        self.profiles = []
        for index in range(self.engine.num_optimization_profiles):
            lo, _opt, hi = self.engine.get_tensor_profile_shape(INPUT_NAME, index)
            self.profiles.append(_Profile(index, tuple(lo), tuple(hi)))
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
        import torch
        p.context = self.engine.create_execution_context()
        if not p.context.set_optimization_profile_async(p.index, stream):
            raise RuntimeError(f"TensorRT: could not select optimization profile {p.index}")
        # Output buffers for the profile's largest batch; their addresses never change.
        p.context.set_input_shape(INPUT_NAME, p.max_shape)
        for name in OUTPUT_NAMES:
            shape = tuple(p.context.get_tensor_shape(name))
            p.outputs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            p.context.set_tensor_address(name, p.outputs[name].data_ptr())
        p.input_shape = p.max_shape

    def infer(self, batch) -> dict:
        import torch
        if self.engine is None:
            raise RuntimeError("tensorrt backend: call load() first")
        if not (isinstance(batch, torch.Tensor) and batch.is_cuda):
            raise TypeError("batch: expected a CUDA torch tensor")
        check_batch(batch, self.bundle.input["size_divisor"])
        batch = batch.contiguous()
        shape = tuple(batch.shape)
        p = self._profile_for(shape)
        stream = torch.cuda.current_stream().cuda_stream
        if p.context is None:
            self._prepare(p, stream)
        if p.input_shape != shape:
            if not p.context.set_input_shape(INPUT_NAME, shape):
                raise RuntimeError(f"TensorRT rejected input shape {shape} for profile {p.index}")
            p.input_shape = shape
            p.views = {}
        if not p.views:  # TensorRT writes outputs densely from the buffer's start
            for name, buf in p.outputs.items():
                out_shape = tuple(p.context.get_tensor_shape(name))
                p.views[name] = buf.view(-1)[: _numel(out_shape)].view(out_shape)
        if p.input_ptr != batch.data_ptr():
            p.context.set_tensor_address(INPUT_NAME, batch.data_ptr())
            p.input_ptr = batch.data_ptr()
        if not p.context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT execution failed for input shape {shape}")
        return dict(p.views)

    def close(self):
        for p in self.profiles:
            p.context, p.outputs, p.views = None, {}, {}
        self.engine = None

    def __enter__(self):
        return self if self.engine is not None else self.load()

    def __exit__(self, *exc):
        self.close()


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
