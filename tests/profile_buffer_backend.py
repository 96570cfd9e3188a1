"""A backend for the tests that treats its outputs the way TensorRT's does, on the CPU.

ProfileBufferBackend runs the bundle's model.onnx under onnxruntime (CPU) but accepts only what a
TensorRT engine built from the bundle accepts (one optimization profile per bucket: exactly the bucket's
height and width, 1 to that bucket's max batch) and returns its outputs the way runtime/backends/tensorrt.py
does: each profile owns ONE set of output buffers sized for its max batch, allocated on first use and
reused by every later call on that profile; a batch of N gets views of the buffers' first N items, written
densely from the buffer's start (TensorRT's layout for a smaller batch). The values are onnxruntime's,
copied bit for bit, so an engine on this backend must return exactly the onnxruntime backend's detections
when the cascade honours the ownership contract (runtime/backends/__init__.py).
"""
from __future__ import annotations

import torch

from runtime import backends


class ProfileBufferBackend:
    name = "profile-buffers"
    io = "torch"
    fixed_shapes = True

    def __init__(self, bundle, device: str = "cpu"):
        if device != "cpu":
            raise ValueError("ProfileBufferBackend runs on the CPU")
        self.bundle, self.device = bundle, device
        self.inner = backends.module("onnxruntime").Backend(bundle, "cpu")
        self.profiles = [(tuple(b), int(mb)) for b, mb in zip(bundle.buckets, bundle.max_batch)]
        self.buffers: dict[int, dict] = {}   # profile -> {name: (max batch, ...) tensor}
        self.calls: list[tuple] = []         # (profile, batch size) of every infer

    def load(self):
        self.inner.load()
        return self

    def input_specs(self) -> list[dict]:
        return [{"name": "image", "profile": i, "min": [1, 3, h, w], "max": [mb, 3, h, w], "dtype": "float32"}
                for i, ((h, w), mb) in enumerate(self.profiles)]

    def infer(self, batch) -> dict:
        backends.check_batch(batch, self.bundle.input["size_divisor"])
        n, _, h, w = batch.shape
        index = next((i for i, (hw, mb) in enumerate(self.profiles) if hw == (h, w) and 1 <= n <= mb), None)
        if index is None:
            raise ValueError(f"batch: shape {tuple(batch.shape)} fits no profile {self.profiles}")
        if index not in self.buffers:
            mb = self.profiles[index][1]
            self.buffers[index] = {k: torch.empty(s, dtype=torch.float32)
                                   for k, s in backends.output_shapes(self.bundle, (mb, 3, h, w)).items()}
        out = self.inner.infer(batch.numpy())
        views = {}
        for name, buf in self.buffers[index].items():
            view = buf.view(-1)[:out[name].size].view(out[name].shape)
            view.copy_(torch.from_numpy(out[name]))
            views[name] = view
        self.calls.append((index, n))
        return views

    def close(self):
        self.inner.close()
        self.buffers = {}

    def __enter__(self):
        return self.load()

    def __exit__(self, *exc):
        self.close()
