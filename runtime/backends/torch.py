"""PyTorch backend: the bundle's torch.export program (model.pt2), on the CPU or CUDA.

torch tensors in, torch tensors out, on the backend's device; runs under torch.no_grad().

On CUDA, calls are replayed from CUDA graphs by default (`cuda_graphs=None` means on for CUDA, off
elsewhere). The network is small, so an eager call is bound by kernel-launch overhead (about 1.7 ms on
an H100/H200 whatever the input size); a graph replay launches the whole network at once. One graph is
captured per (padded batch, H, W) on first use: the batch is padded up to the next power of two,
copied into the graph's static input, replayed, and the outputs are sliced back to N rows and cloned
(the next replay overwrites the static outputs). Padding is sound because the items of a batch are
independent (BatchNorm runs in eval mode). If a capture fails, the backend warns once and runs eagerly
from then on.
Output ownership: the outputs of infer() are the caller's (graph outputs are cloned), stronger than the
contract in runtime/backends/__init__.py.
"""
from __future__ import annotations

import contextlib
import warnings

from . import INPUT_NAME, OUTPUT_NAMES, check_batch

MODEL_FILE = "model.pt2"
MAX_GRAPHS = 64     # captured shapes per backend; further shapes run eagerly
# Static inputs a backend's graphs may hold (each graph keeps its own; a batch of 16 of the largest
# bucket is 545 MB): beyond it new shapes run eagerly, so a smaller GPU is not filled with buffers.
MAX_GRAPH_BYTES = 4 << 30
WARMUP_CALLS = 3    # eager calls on the side stream before a capture (torch.cuda.graphs recipe)


def unavailable_reason(bundle, device: str) -> str | None:
    if MODEL_FILE not in bundle.artefacts:
        return f"the bundle has no {MODEL_FILE}"
    return None


def padded_size(n: int) -> int:
    """The batch size a batch of n runs at under graphs: the next power of two >= n."""
    if n < 1:
        raise ValueError(f"batch size: expected >= 1, got {n}")
    return 1 << (n - 1).bit_length()


def pad_batch(batch, n_padded: int):
    """A new (n_padded, ...) tensor: batch's rows, then zero rows. Always a copy (never batch itself),
    on batch's device."""
    import torch
    n = batch.shape[0]
    if n_padded < n:
        raise ValueError(f"pad_batch: cannot pad a batch of {n} down to {n_padded}")
    out = torch.zeros((n_padded, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
    out[:n].copy_(batch)
    return out


class _Entry:
    """One captured shape: the graph (None where nothing is captured: the CPU emulation) and its static
    input and outputs, which each replay reads and overwrites in place."""
    __slots__ = ("graph", "static_in", "static_outs")

    def __init__(self, graph, static_in, static_outs):
        self.graph, self.static_in, self.static_outs = graph, static_in, static_outs


class GraphRunner:
    """Runs `module` on (N, 3, H, W) batches through one CUDA graph per (padded N, H, W).

    On CUDA (capture=True) each new shape is warmed up on a side stream and captured into a graph; all
    graphs share one memory pool. With capture=False (any device, the CPU included) "replay" runs the
    module eagerly on the static input and copies the results into the static outputs, so the padding,
    buffer reuse, slicing and cloning are the same code and can be tested without a GPU.
    Beyond max_graphs shapes, or max_bytes of static inputs, new shapes run eagerly (unpadded). If a
    capture fails, the runner warns once, drops its graphs and runs eagerly from then on (`disabled`
    says why).
    """

    def __init__(self, module, device, capture: bool | None = None, max_graphs: int = MAX_GRAPHS,
                 warmup_calls: int = WARMUP_CALLS, max_bytes: int = MAX_GRAPH_BYTES):
        import torch
        self.module, self.device = module, torch.device(device)
        self.capture = self.device.type == "cuda" if capture is None else bool(capture)
        if self.capture and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {str(self.device)!r}")
        if max_graphs < 0:
            raise ValueError(f"max_graphs: expected >= 0, got {max_graphs}")
        self.max_graphs, self.warmup_calls, self.max_bytes = max_graphs, warmup_calls, max_bytes
        self.entries: dict = {}      # (padded N, H, W) -> _Entry
        self.static_bytes = 0        # held by the entries' static inputs
        self.disabled: str | None = None
        self._full_warned = False
        self._pool = self._stream = None
        if self.capture:
            self._pool = torch.cuda.graph_pool_handle()   # one pool shared by every graph of this runner
            self._stream = torch.cuda.Stream(device=self.device)

    @property
    def graph_count(self) -> int:
        return len(self.entries)

    @staticmethod
    def key(batch) -> tuple:
        n, _, h, w = batch.shape
        return padded_size(n), h, w

    def __call__(self, batch) -> tuple:
        """The module's outputs for batch (moved to the runner's device), N rows each, owned by the
        caller (later calls do not overwrite them)."""
        import torch
        with torch.no_grad():
            if self.disabled is not None:
                return self._eager(batch)
            key = self.key(batch)
            entry = self.entries.get(key)
            if entry is None:
                in_bytes = key[0] * batch[0].numel() * batch.element_size()
                if len(self.entries) >= self.max_graphs or self.static_bytes + in_bytes > self.max_bytes:
                    if not self._full_warned:
                        self._full_warned = True
                        warnings.warn(f"torch backend: {len(self.entries)} CUDA graph shapes captured holding "
                                      f"{self.static_bytes / 2**20:.0f} MiB of inputs (max_graphs {self.max_graphs}, "
                                      f"max_bytes {self.max_bytes / 2**20:.0f} MiB); new shapes such as {key} run "
                                      "eagerly", RuntimeWarning, stacklevel=3)
                    return self._eager(batch)
                entry = self._new_entry(batch, key)
                if entry is None:
                    return self._eager(batch)
                self.entries[key] = entry
                self.static_bytes += in_bytes
            else:
                entry.static_in[:batch.shape[0]].copy_(batch)
            self._replay(entry)
            n = batch.shape[0]
            return tuple(out[:n].clone() for out in entry.static_outs)

    def _eager(self, batch) -> tuple:
        return tuple(self.module(batch.to(self.device)))

    def _replay(self, entry):
        if entry.graph is not None:
            entry.graph.replay()
        else:
            for static, out in zip(entry.static_outs, self.module(entry.static_in)):
                static.copy_(out)

    def _new_entry(self, batch, key):
        """A captured entry for key, its static input holding batch (zero rows after it); None after a
        failed capture (the runner is then disabled)."""
        static_in = pad_batch(batch.to(self.device), key[0])
        if not self.capture:
            return _Entry(None, static_in, tuple(out.clone() for out in self.module(static_in)))
        try:
            return self._capture(static_in)
        except Exception as exc:  # noqa: BLE001 (any failure: eager from now on, never a crash)
            self.disabled = f"capture of shape {key} failed: {type(exc).__name__}: {exc}"
            self.entries.clear()
            self.static_bytes = 0
            warnings.warn(f"torch backend: CUDA graphs turned off, running eagerly from now on ({self.disabled})",
                          RuntimeWarning, stacklevel=4)
            return None

    def _capture(self, static_in) -> _Entry:
        import torch
        current = torch.cuda.current_stream(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            # Warm-up on a side stream (cuDNN/cuBLAS handles, workspaces and algorithm choices are made
            # here, not under capture), as in the torch.cuda.graphs recipe.
            self._stream.wait_stream(current)
            with torch.cuda.stream(self._stream):
                for _ in range(self.warmup_calls):
                    self.module(static_in)
            current.wait_stream(self._stream)
            # torch.cuda.graph ends the capture even when the body raises.
            with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
                static_outs = tuple(self.module(static_in))
        finally:
            # torch.cuda.graph.__exit__ skips restoring the stream when capture_end() raises; never leave
            # the caller's work on the capture stream, nor that stream capturing.
            torch.cuda.set_stream(current)
            with torch.cuda.stream(self._stream):
                if torch.cuda.is_current_stream_capturing():
                    # The capture ends either way; the first error is the one worth raising.
                    with contextlib.suppress(Exception):
                        graph.capture_end()
        return _Entry(graph, static_in, static_outs)


class Backend:
    name = "torch"
    io = "torch"
    fixed_shapes = False

    def __init__(self, bundle, device: str = "cpu", cuda_graphs: bool | None = None, max_graphs: int = MAX_GRAPHS):
        """cuda_graphs: None = on where device is CUDA, off elsewhere; True on a non-CUDA device is an error."""
        import torch
        on_cuda = torch.device(device).type == "cuda"
        if cuda_graphs and not on_cuda:
            raise ValueError(f"torch backend: cuda_graphs=True needs a CUDA device, got device {device!r} "
                             "(leave cuda_graphs=None to use graphs only on CUDA)")
        self.bundle, self.device = bundle, device
        self.cuda_graphs = on_cuda if cuda_graphs is None else bool(cuda_graphs)
        self.max_graphs = max_graphs
        self.module = None
        self.runner: GraphRunner | None = None

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
        if self.cuda_graphs:
            self.runner = GraphRunner(self.module, self.device, capture=True, max_graphs=self.max_graphs)
        return self

    @property
    def graph_count(self) -> int:
        """CUDA graphs captured so far (0 with graphs off, or after a failed capture turned them off)."""
        return self.runner.graph_count if self.runner is not None else 0

    def input_specs(self) -> list[dict]:
        return [{"name": INPUT_NAME, "shape": ["N", 3, "H", "W"], "dtype": "float32"}]

    def infer(self, batch) -> dict:
        import torch
        if self.module is None:
            raise RuntimeError("torch backend: call load() first")
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"batch: expected a torch tensor, got {type(batch).__name__}")
        check_batch(batch, self.bundle.input["size_divisor"])
        if self.runner is not None:
            return dict(zip(OUTPUT_NAMES, self.runner(batch)))
        with torch.no_grad():
            outs = self.module(batch.to(self.device))
        return dict(zip(OUTPUT_NAMES, outs))

    def close(self):
        self.runner = None
        self.module = None

    def __enter__(self):
        return self if self.module is not None else self.load()

    def __exit__(self, *exc):
        self.close()
