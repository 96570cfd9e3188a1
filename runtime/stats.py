"""Per-call accounting of the engine: pixels, chips and batches per scale, time per stage.

A fresh RunStats is made for every call and its as_dict() becomes engine.last_stats (a returned value,
not state the next call builds on). Stage times are host wall-clock seconds; on CUDA, work queued
asynchronously is charged to the stage that waits for it (the next host read), unless the stats were made
with sync (the engine's sync_stages): then each stage ends by waiting for the device.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

STAGES = ("network", "chips", "postprocess")


class RunStats:
    def __init__(self, mode: str, images: int, scales: int, backend: str, device: str, padding: str, sync=None):
        """sync: called at the end of every stage (torch.cuda.synchronize: stage times hold their GPU work)."""
        self.info = {"mode": mode, "images": images, "backend": backend, "device": device, "padding": padding,
                     "synced_stages": sync is not None}
        self._sync = sync
        # shapes: network calls per input shape at that scale
        self.scales = [{"scale": s + 1, "chips": 0, "pixels": 0, "padded_pixels": 0, "shapes": {}} for s in range(scales)]
        self.batches: dict[str, int] = {}
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.host_syncs = None
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self.seconds[name] += time.perf_counter() - start

    def add_inputs(self, scale_index: int, real_hw, padded_hw):
        """One network input (whole image or chip) at scale_index (0-based)."""
        entry = self.scales[scale_index]
        entry["chips"] += 1
        entry["pixels"] += int(real_hw[0]) * int(real_hw[1])
        entry["padded_pixels"] += int(padded_hw[0]) * int(padded_hw[1])

    def add_canvas(self, scale_index: int, padded_hw):
        """One packed canvas (runtime/packing.py) at scale_index: its pixels are the padded pixels of the
        chips on it (add_inputs counts those chips with padded_hw (0, 0))."""
        self.scales[scale_index]["padded_pixels"] += int(padded_hw[0]) * int(padded_hw[1])

    def add_batch(self, shape, scale_index: int | None = None):
        key = f"{shape[0]}x{shape[1]}"
        self.batches[key] = self.batches.get(key, 0) + 1
        if scale_index is not None:
            shapes = self.scales[scale_index]["shapes"]
            shapes[key] = shapes.get(key, 0) + 1

    def as_dict(self) -> dict:
        seconds = {k: round(v, 6) for k, v in self.seconds.items()}
        seconds["total"] = round(time.perf_counter() - self._start, 6)
        return {**self.info, "scales": [{**s, "shapes": dict(s["shapes"])} for s in self.scales], "batches": dict(self.batches),
                "seconds": seconds, "host_syncs": self.host_syncs}
