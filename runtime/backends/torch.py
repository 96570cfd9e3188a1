"""PyTorch backend: the bundle's torch.export program (model.pt2), on the CPU or CUDA.

torch tensors in, torch tensors out, on the backend's device; runs under torch.no_grad().
"""
from __future__ import annotations

from . import OUTPUT_NAMES, check_batch

MODEL_FILE = "model.pt2"


def unavailable_reason(bundle, device: str) -> str | None:
    if MODEL_FILE not in bundle.artefacts:
        return f"the bundle has no {MODEL_FILE}"
    return None


class Backend:
    name = "torch"
    io = "torch"
    fixed_shapes = False

    def __init__(self, bundle, device: str = "cpu"):
        self.bundle, self.device = bundle, device
        self.module = None

    def load(self):
        import torch
        program = torch.export.load(str(self.bundle.path(MODEL_FILE)))
        if torch.device(self.device).type != "cpu":
            # The program was exported on the CPU and its graph names that device in op arguments
            # (_assert_tensor_metadata of each .to(), constructors); Module.to() leaves those alone, so
            # on CUDA the first call failed with "Tensor device mismatch" (seen on an H200, 2026-11-26).
            from torch.export.passes import move_to_device_pass
            program = move_to_device_pass(program, self.device)
        self.module = program.module().to(self.device)
        return self

    def input_specs(self) -> list[dict]:
        return [{"name": "image", "shape": ["N", 3, "H", "W"], "dtype": "float32"}]

    def infer(self, batch) -> dict:
        import torch
        if self.module is None:
            raise RuntimeError("torch backend: call load() first")
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"batch: expected a torch tensor, got {type(batch).__name__}")
        check_batch(batch, self.bundle.input["size_divisor"])
        with torch.no_grad():
            outs = self.module(batch.to(self.device))
        return dict(zip(OUTPUT_NAMES, outs))

    def close(self):
        self.module = None

    def __enter__(self):
        return self if self.module is not None else self.load()

    def __exit__(self, *exc):
        self.close()
