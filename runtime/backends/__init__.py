"""Network backends: one module per inference runtime, the same methods in each, imported by name.

Each module (tensorrt, onnxruntime, torch) defines
    unavailable_reason(bundle, device) -> str | None    why it cannot run here (None: it can)
    Backend(bundle, device)                              with
        name, device ("cpu" | "cuda"), io ("numpy" | "torch": the array kind infer takes and returns),
        fixed_shapes (True: only the bundle's bucket shapes run), load() -> self, input_specs(),
        infer(batch) -> {"scores", "ltrb", "focus"} (docs/contract.md; valid until the next infer, see
        "Output ownership" below), close(), context manager.
No registry: `load_backend` imports runtime.backends.<name> when it is asked for.

Output ownership (the contract every backend keeps and every caller relies on): the arrays infer
returns are valid until the next infer call on the same backend, whatever its shape or profile. A
backend may return views of memory it reuses (TensorRT: one output buffer per optimization profile,
overwritten by the next batch on that profile); a caller that keeps an output, or anything viewing it,
past its next infer copies it first (runtime/cascade.py run_scale does for the focus maps it reads after
the scale's last batch). On CUDA the outputs are produced on the stream current at the call, in stream
order: work queued on that stream after infer returns may read them without a synchronisation.
"""
from __future__ import annotations

import importlib

from ..bundle import INPUT_NAME, OUTPUT_NAMES  # noqa: F401 (docs/contract.md's names, for the backends)
from ..bundle import focus_channel_count

NAMES = ("tensorrt", "onnxruntime", "torch")
DEVICES = ("cpu", "cuda")
# backend="auto": the first (backend, device) that can run here (docs/design.md).
AUTO_ORDER = (("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("onnxruntime", "cpu"), ("torch", "cuda"),
              ("torch", "cpu"))


def module(name: str):
    if name not in NAMES:
        raise ValueError(f"backend: expected 'auto' or one of {list(NAMES)}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


def cuda_unavailable_reason() -> str | None:
    """None when CUDA work can run end to end: a GPU for torch and the ops' CUDA kernels."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    from runtime import ops
    if not ops.with_cuda():
        return "runtime._C was built without CUDA kernels (rebuild it with nvcc present)"
    return None


def unavailable_reason(name: str, bundle, device: str) -> str | None:
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {list(DEVICES)} or None, got {device!r}")
    mod = module(name)
    if device == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            return reason
    return mod.unavailable_reason(bundle, device)


def select(bundle, backend: str = "auto", device: str | None = None) -> tuple[str, str, list[str]]:
    """(backend name, device, notes on what was passed over and why). Raises ValueError when nothing
    can run, naming each candidate's reason."""
    if device is not None and device not in DEVICES:
        raise ValueError(f"device: expected one of {list(DEVICES)} or None, got {device!r}")
    if backend == "auto":
        candidates = [(n, d) for n, d in AUTO_ORDER if device is None or d == device]
    else:
        module(backend)  # unknown names fail here
        devices = [device] if device is not None else ["cuda", "cpu"]
        candidates = [(backend, d) for d in devices if (backend, d) in AUTO_ORDER]
        if not candidates:
            raise ValueError(f"backend {backend!r} runs on {[d for n, d in AUTO_ORDER if n == backend]}, "
                             f"not on device {device!r}")
    notes = []
    for name, dev in candidates:
        reason = unavailable_reason(name, bundle, dev)
        if reason is None:
            return name, dev, notes
        notes.append(f"{name} on {dev}: {reason}")
    raise ValueError(f"backend {backend!r} (device {device!r}): nothing can run this bundle here: "
                     + "; ".join(notes))


def load_backend(name: str, bundle, device: str, **options):
    """The backend `name` on `device`, loaded (ready to infer); options go to its constructor (the torch
    backend's cuda_graphs)."""
    return module(name).Backend(bundle, device, **options).load()


def check_batch(batch, size_divisor: int, name: str = "batch"):
    """(N, 3, H, W) float32 with N >= 1 and H, W multiples of size_divisor."""
    shape = tuple(batch.shape)
    if len(shape) != 4 or shape[1] != 3 or shape[0] < 1 or shape[2] % size_divisor or shape[3] % size_divisor \
            or shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"{name}: expected shape (N >= 1, 3, H, W) with H and W positive multiples of "
                         f"{size_divisor}, got {shape}")
    if "float32" not in str(batch.dtype):
        raise TypeError(f"{name}: expected float32, got {batch.dtype}")


def output_shapes(bundle, batch_shape) -> dict:
    """The contract's output shapes for an input of batch_shape (N, 3, H, W)."""
    n, _, h, w = batch_shape
    det, focus = bundle.strides["detection"], bundle.strides["focus"]
    return {"scores": (n, len(bundle.classes), h // det, w // det), "ltrb": (n, 4, h // det, w // det),
            "focus": (n, focus_channel_count(bundle), h // focus, w // focus)}
