"""AutoFocusEngine: a bundle, a backend and the cascade behind one call.

    engine = AutoFocusEngine("bundles/default", backend="auto")    # or "tensorrt" | "onnxruntime" | "torch"
    engine = AutoFocusEngine("bundles/default", backend="torch", device="cuda", cuda_graphs=False)
    det = engine("image.jpg")                                     # Detections (NumPy, original pixels)
    det = engine(image_bgr, mode="sniper", soft_nms={"sigma": 0.3})
    dets = engine.detect_batch([a, b, c])
    engine.last_stats                                             # what the last call ran, and its times

Parameters (runtime/params.py) come from the bundle, overridden per engine (AutoFocusEngine(bundle,
**overrides)) and per call (engine(image, **overrides)); unknown names raise TypeError.
device=None: "cuda" when the chosen backend runs there, else "cpu". On CUDA, images, network outputs
and post-processing stay on the GPU (FocusChips run on a host copy of the small focus maps unless
chips_on_host=False; decode reads no candidate count unless padded_decode=False).
count_host_syncs=True (an attribute, for benchmarks; off by default): last_stats["host_syncs"] counts the
host synchronisations torch sees plus one per onnxruntime batch (its run ends with one). Counting sets
torch's process-wide sync debug mode to "warn" and records warnings for the call's duration (not
thread-safe); off, the engine leaves both as the user set them and host_syncs is None.
cuda_graphs (torch backend on CUDA; None = on there): replay the network from one CUDA graph per input
shape (runtime/backends/torch.py). sync_stages=True (an attribute, for profiling): on CUDA, wait for the
device at the end of every stage, so last_stats' stage times hold the GPU work each stage queued rather
than whichever stage waited for it (slower: benchmarks time without it and attribute with it).
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from . import backends, cascade, ops, packing, params
from .bundle import Bundle, load_bundle
from .detections import Detections
from .images import load_image, pad_extreme_aspect
from .stats import RunStats

MODES = cascade.MODES
CUDA_MAX_BATCH = 16


class AutoFocusEngine:
    def __init__(self, bundle, backend: str = "auto", device: str | None = None, cuda_graphs: bool | None = None,
                 **overrides):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if not isinstance(backend, str):
            raise TypeError(f"backend: expected a name ('auto' or one of {list(backends.NAMES)}), got {backend!r}")
        self.backend_name, self.device, self.backend_notes = backends.select(self.bundle, backend, device)
        params.check_names(overrides, "AutoFocusEngine")
        if cuda_graphs not in (None, True, False):
            raise TypeError(f"cuda_graphs: expected None, True or False, got {cuda_graphs!r}")
        options = {}
        if cuda_graphs is not None:
            if self.backend_name != "torch" or self.device != "cuda":
                raise ValueError(f"cuda_graphs: applies to the torch backend on CUDA, not {self.backend_name} on "
                                 f"{self.device}")
            options["cuda_graphs"] = cuda_graphs
        self._base = params.bundle_values(self.bundle)
        # On CUDA, bucket shapes (TensorRT profiles) shared by as many inputs as fit, and FocusChips on a
        # host copy of the maps: a GPU call costs more than its pixels, and the chips are read on the host
        # anyway (H200, torch backend, 150 val images: 30.7 -> 17.2 ms an image at equal AP; README).
        # On the CPU the next multiple of 32 runs fewer pixels and equals model/evaluate.py exactly.
        self._base["padding"] = "shared" if self.device == "cuda" else "divisor"
        self._base["chips_on_host"] = self.device == "cuda"
        self._base["padded_decode"] = self.device == "cuda"
        # On CUDA a scale's chips packed onto its fixed canvases (runtime/packing.py): one or two input
        # shapes a scale and full batches; on the CPU time follows pixels and each chip runs alone.
        self._base["packing"] = "canvas" if self.device == "cuda" else "none"
        self.overrides = dict(overrides)
        self._backend = backends.load_backend(self.backend_name, self.bundle, self.device, **options)
        if self.device == "cuda" and not self._backend.fixed_shapes:
            # Up to CUDA_MAX_BATCH inputs a network call whatever the bucket (the bundle's max batches are
            # TensorRT profile sizes): each call also costs a decode and a host read of its count.
            self._base["max_batch"] = CUDA_MAX_BATCH
        self.sync_stages = False
        self.count_host_syncs = False
        self.params = self._resolve({})  # fails now, not at the first image
        self.last_stats: dict | None = None
        self._ort_runs = 0

    def __repr__(self):
        return (f"AutoFocusEngine({str(self.bundle.folder)!r}, backend={self.backend_name!r}, "
                f"device={self.device!r})")

    @property
    def cuda_graphs(self) -> bool:
        """Whether the network replays from CUDA graphs (torch backend on CUDA; False after a failed capture)."""
        runner = getattr(self._backend, "runner", None)
        return runner is not None and runner.disabled is None

    @property
    def classes(self) -> list:
        return list(self.bundle.classes)

    def _resolve(self, call_overrides: dict) -> params.CascadeParams:
        p = params.resolve(self._base, self.overrides, call_overrides)
        if p.max_batch is not None and self._backend.fixed_shapes:
            raise ValueError(f"max_batch: {self.backend_name} runs the bundle's profiles, whose max batches are fixed "
                             f"({self.bundle.max_batch}); leave max_batch=None")
        if p.packing == "canvas" and self._backend.fixed_shapes:
            buckets = {tuple(b) for b in self.bundle.buckets}
            for s in range(1, len(p.scales)):
                missing = [c for c in packing.canvases_for(self.bundle, p.scales, s) if tuple(c) not in buckets]
                if missing:
                    raise ValueError(f"packing: the canvases {missing} of scale {s + 1} are not buckets of the bundle, "
                                     f"and {self.backend_name} runs its buckets only (use packing='none')")
        if p.padding == "divisor" and self._backend.fixed_shapes:
            raise ValueError(f"padding: 'divisor' needs a backend that runs any shape; {self.backend_name} runs "
                             "the bundle's buckets only (use padding='bucket')")
        return p

    # ------------------------------------------------------------------------------------ calls

    def __call__(self, image, mode: str = "autofocus", **overrides) -> Detections:
        """Detections of one image: a file path or an HxWx3 uint8 BGR array (see runtime/images.py)."""
        return self._detect([load_image(image, "image")], mode, overrides)[0]

    def detect_batch(self, images, mode: str = "autofocus", **overrides) -> list[Detections]:
        """Detections of each image; scale-1 inputs of all images and chips of all images batch together."""
        if isinstance(images, (str, os.PathLike, np.ndarray)) or not hasattr(images, "__iter__"):
            raise TypeError(f"images: expected a list of paths or arrays, got {type(images).__name__}")
        return self._detect([load_image(im, f"images[{i}]") for i, im in enumerate(images)], mode, overrides)

    def _detect(self, arrays: list, mode: str, overrides: dict) -> list[Detections]:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        p = self._resolve(overrides)
        stats = RunStats(mode, len(arrays), len(p.scales), self.backend_name, self.device, p.padding,
                         sync=torch.cuda.synchronize if self.sync_stages and self.device == "cuda" else None)
        with self._count_syncs(stats):
            device = torch.device(self.device)
            fill = _mean_bgr(self.bundle.input)
            with stats.stage("chips"):
                images = [ops.to_device(pad_extreme_aspect(a, fill), device) for a in arrays]
            ctx = cascade.Context(images=images, image_sizes=[a.shape[:2] for a in arrays], network=self.infer,
                                  bundle=self.bundle, params=p, stats=stats, device=device)
            # On CUDA the ops skip their value checks (NaN scores and the like) on what the cascade made
            # itself: decode's and focus_chips' kernels flag non-finite network outputs as they read them,
            # and what is still checked is read once, at the end, not one host synchronisation each. A
            # failure still raises before anything is returned.
            with ops.deferred_checks(), ops.trusted_values():
                detections = cascade.run(ctx, mode)
        self.last_stats = stats.as_dict()
        return detections

    def infer(self, batch: torch.Tensor) -> dict:
        """The network on one (N, 3, H, W) normalised batch -> {"scores", "ltrb", "focus"} as torch
        tensors on the engine's device (docs/contract.md). The cascade calls it through this attribute,
        so wrapping it on an instance observes or caches every network run (benchmarks/common.py)."""
        if self._backend.io == "numpy":
            out = self._backend.infer(batch.numpy())
            return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
        if self.backend_name == "onnxruntime":
            self._ort_runs += 1
        return self._backend.infer(batch)

    @contextmanager
    def _count_syncs(self, stats: RunStats):
        """With count_host_syncs on CUDA: counts the synchronising torch operations of the call (sync debug
        mode "warn", process-wide for the call). Otherwise touches nothing."""
        if self.device != "cuda" or not self.count_host_syncs:
            yield
            return
        previous = torch.cuda.get_sync_debug_mode()
        self._ort_runs = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        for w in caught:  # give back every other warning
            if w not in syncs:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        stats.host_syncs = len(syncs) + self._ort_runs

    # ------------------------------------------------------------------------------------ lifetime

    def close(self):
        self._backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _mean_bgr(norm: dict) -> list:
    """The pixel (uint8, image order) that normalises to ~0: the padding colour of padded images."""
    mean = [round(255 * m) for m in norm["mean"]]
    return mean[::-1] if norm["image_order"] != norm["channel_order"] else mean
