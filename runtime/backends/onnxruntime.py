"""ONNX Runtime backend: model.onnx on the CUDA execution provider, or on the CPU.

CPU: NumPy in, NumPy out. CUDA: torch CUDA tensors in and out through IO binding (no host copies). The
session's compute stream is fixed when it is made (user_compute_stream: torch's current stream at
load()); a call made while another stream is current (inside torch.cuda.stream(s)) is ordered with it on
the device: the session's stream waits for the caller's before the run, and the caller's waits for the
session's after it (events, no host sync). ONNX Runtime's run ends with a stream synchronisation of its
own: one host sync per batch on CUDA.
Output ownership: every infer() returns arrays allocated for that call (stronger than the contract in
runtime/backends/__init__.py: later calls never touch them).
"""
from __future__ import annotations

import numpy as np

from . import OUTPUT_NAMES, check_batch, output_shapes

MODEL_FILE = "model.onnx"


def unavailable_reason(bundle, device: str) -> str | None:
    if MODEL_FILE not in bundle.artefacts:
        return f"the bundle has no {MODEL_FILE}"
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


class Backend:
    name = "onnxruntime"
    fixed_shapes = False

    def __init__(self, bundle, device: str = "cpu"):
        self.bundle, self.device = bundle, device
        self.io = "torch" if device == "cuda" else "numpy"
        self.session = None
        self._device_id = 0
        self._stream = None   # the session's compute stream (torch.cuda.Stream), on CUDA

    def load(self):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: a missing optional provider is not news
        providers = ["CPUExecutionProvider"]
        if self.device == "cuda":
            import torch
            self._device_id = torch.cuda.current_device()
            self._stream = torch.cuda.current_stream()
            stream = self._stream.cuda_stream
            providers = [("CUDAExecutionProvider", {"device_id": self._device_id, "has_user_compute_stream": "1",
                                                    "user_compute_stream": str(stream)}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.bundle.path(MODEL_FILE)), options, providers=providers)
        if self.device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"onnxruntime could not start the CUDA execution provider for {MODEL_FILE}")
        names = tuple(o.name for o in self.session.get_outputs())
        if sorted(names) != sorted(OUTPUT_NAMES):
            raise ValueError(f"{self.bundle.path(MODEL_FILE)}: outputs {names}, expected {OUTPUT_NAMES} "
                             "(docs/contract.md)")
        self._input = self.session.get_inputs()[0].name
        return self

    def input_specs(self) -> list[dict]:
        return [{"name": i.name, "shape": list(i.shape), "dtype": "float32"} for i in self.session.get_inputs()]

    def infer(self, batch) -> dict:
        if self.session is None:
            raise RuntimeError("onnxruntime backend: call load() first")
        check_batch(batch, self.bundle.input["size_divisor"])
        if self.device == "cpu":
            outs = self.session.run(list(OUTPUT_NAMES), {self._input: np.ascontiguousarray(batch, np.float32)})
            return dict(zip(OUTPUT_NAMES, outs))
        import torch
        if not (isinstance(batch, torch.Tensor) and batch.is_cuda):
            raise TypeError("batch: expected a CUDA torch tensor for onnxruntime on cuda")
        if batch.device != torch.device("cuda", self._device_id):
            raise ValueError(f"batch: on {batch.device}, the session was made on cuda:{self._device_id}")
        caller = torch.cuda.current_stream(batch.device)
        other_stream = caller != self._stream
        if other_stream:
            self._stream.wait_stream(caller)  # the batch was written on the caller's stream
        batch = batch.contiguous()
        binding = self.session.io_binding()
        binding.bind_input(self._input, "cuda", self._device_id, np.float32, tuple(batch.shape), batch.data_ptr())
        outs = {name: torch.empty(shape, dtype=torch.float32, device=batch.device)
                for name, shape in output_shapes(self.bundle, tuple(batch.shape)).items()}
        for name, t in outs.items():
            binding.bind_output(name, "cuda", self._device_id, np.float32, tuple(t.shape), t.data_ptr())
        self.session.run_with_iobinding(binding)
        if other_stream:
            caller.wait_stream(self._stream)  # the outputs are written on the session's stream
        return outs

    def close(self):
        self.session = None

    def __enter__(self):
        return self if self.session is not None else self.load()

    def __exit__(self, *exc):
        self.close()
