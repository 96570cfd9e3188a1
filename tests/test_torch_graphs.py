"""CUDA-graph replay in the torch backend (runtime/backends/torch.py).

On the CPU: the padding helpers, and the graph runner's buffer logic with eager "replays" on the test
bundle's model (a batch padded to the next power of two and sliced gives the unpadded outputs: the
independence the graphs rely on). On CUDA (skipped with the reason elsewhere): graph replays match
the same backend run eagerly, outputs survive later replays, one graph per (padded N, H, W)."""
import warnings

import pytest
import torch

from runtime import backends
from runtime.backends import OUTPUT_NAMES
from runtime.backends.torch import Backend, GraphRunner, pad_batch, padded_size

CUDA_REASON = backends.cuda_unavailable_reason()
needs_cuda = pytest.mark.skipif(CUDA_REASON is not None, reason=f"CUDA graphs need a GPU: {CUDA_REASON}")


@pytest.fixture(scope="module")
def cpu_backend(bundle):
    with Backend(bundle, "cpu") as b:
        yield b


def _images(n, h, w, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=gen) * 4 - 2).to(device)  # about the normalised range


def assert_outputs_close(got: dict, want: dict, atol: float, rtol: float):
    """ltrb and focus close; scores close except 3x3 peak flips (a near tie kept on one side and zeroed
    on the other), of which a few are allowed."""
    assert set(got) == set(want) == set(OUTPUT_NAMES)
    for name in ("ltrb", "focus"):
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")
    g, w = got["scores"], want["scores"]
    assert g.shape == w.shape
    flips = (g == 0) != (w == 0)
    assert int(flips.sum()) <= max(1, flips.numel() // 1000), f"scores: {int(flips.sum())} peak flips"
    torch.testing.assert_close(torch.where(flips, 0.0, g), torch.where(flips, 0.0, w), atol=atol, rtol=rtol,
                               msg=lambda m: f"scores: {m}")


# ------------------------------------------------------------------------------------ CPU

@pytest.mark.parametrize("n,want", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8), (9, 16)])
def test_padded_size(n, want):
    assert padded_size(n) == want


def test_padded_size_refuses_empty_batches():
    with pytest.raises(ValueError, match=">= 1"):
        padded_size(0)


def test_pad_batch():
    x = _images(3, 32, 64, seed=0)
    p = pad_batch(x, 4)
    assert p.shape == (4, 3, 32, 64) and p.dtype == x.dtype
    assert torch.equal(p[:3], x) and not p[3].any()
    same = pad_batch(x, 3)
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()  # a copy: graphs write into it
    with pytest.raises(ValueError, match="down"):
        pad_batch(x, 2)


def test_padded_batch_gives_the_unpadded_outputs(cpu_backend):
    """The real model on N=3 padded to 4 and sliced equals the plain N=3 call: items are independent."""
    x = _images(3, 96, 128, seed=1)
    want = cpu_backend.infer(x)
    with torch.no_grad():
        padded = cpu_backend.module(pad_batch(x, 4))
    assert_outputs_close({k: v[:3] for k, v in zip(OUTPUT_NAMES, padded)}, want, atol=1e-5, rtol=1e-5)


def test_runner_replays_match_eager_and_outputs_are_owned(cpu_backend):
    """The graph runner's path (static buffers, padding, slicing, cloning) with eager replays."""
    runner = GraphRunner(cpu_backend.module, "cpu")
    assert not runner.capture
    a, b, c = _images(3, 96, 128, seed=2), _images(4, 96, 128, seed=3), _images(1, 64, 96, seed=4)
    out_a = dict(zip(OUTPUT_NAMES, runner(a)))
    assert runner.graph_count == 1 and (4, 96, 128) in runner.entries
    assert {k: v.shape[0] for k, v in out_a.items()} == {k: 3 for k in OUTPUT_NAMES}
    saved_a = {k: v.clone() for k, v in out_a.items()}
    out_b = dict(zip(OUTPUT_NAMES, runner(b)))           # same key: overwrites the static buffers
    assert runner.graph_count == 1
    out_c = dict(zip(OUTPUT_NAMES, runner(c)))           # a new key
    assert runner.graph_count == 2 and (1, 64, 96) in runner.entries
    for k in OUTPUT_NAMES:
        assert torch.equal(out_a[k], saved_a[k]), f"{k} was overwritten by a later replay"
    assert_outputs_close(out_a, cpu_backend.infer(a), atol=1e-5, rtol=1e-5)
    assert_outputs_close(out_b, cpu_backend.infer(b), atol=1e-5, rtol=1e-5)
    assert_outputs_close(out_c, cpu_backend.infer(c), atol=1e-5, rtol=1e-5)
    again = dict(zip(OUTPUT_NAMES, runner(a)))           # N=3 after N=4 in the same buffer: row 3 is stale
    assert_outputs_close(again, saved_a, atol=1e-5, rtol=1e-5)


def test_runner_beyond_max_graphs_runs_eagerly(cpu_backend):
    runner = GraphRunner(cpu_backend.module, "cpu", max_graphs=1)
    runner(_images(2, 64, 64, seed=5))
    x = _images(2, 64, 96, seed=6)
    with pytest.warns(RuntimeWarning, match="max_graphs"):
        out = dict(zip(OUTPUT_NAMES, runner(x)))
    assert runner.graph_count == 1 and runner.disabled is None
    assert_outputs_close(out, cpu_backend.infer(x), atol=1e-5, rtol=1e-5)


def test_runner_beyond_max_bytes_runs_eagerly(cpu_backend):
    # Room for the static input of one (2 -> 2, 3, 64, 64) float32 batch (98,304 bytes), not two.
    runner = GraphRunner(cpu_backend.module, "cpu", max_bytes=150_000)
    runner(_images(2, 64, 64, seed=5))
    assert runner.static_bytes == 2 * 3 * 64 * 64 * 4
    x = _images(1, 96, 64, seed=6)  # 73,728 more bytes: over the budget
    with pytest.warns(RuntimeWarning, match="max_bytes"):
        out = dict(zip(OUTPUT_NAMES, runner(x)))
    assert runner.graph_count == 1 and runner.disabled is None
    assert_outputs_close(out, cpu_backend.infer(x), atol=1e-5, rtol=1e-5)
    runner(_images(1, 64, 64, seed=7))  # 49,152 bytes: still fits
    assert runner.graph_count == 2


class _FailingRunner(GraphRunner):
    """A runner whose every capture fails, as a capture does when the network synchronises."""
    def _capture(self, static_in):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_warns_once_and_runs_eagerly_for_good(cpu_backend):
    runner = _FailingRunner(cpu_backend.module, "cpu")
    runner.capture = True  # the CPU cannot capture: this exercises the failure path alone
    x, y = _images(3, 64, 64, seed=7), _images(2, 64, 96, seed=8)
    with pytest.warns(RuntimeWarning, match="running eagerly from now on.*not permitted"):
        out = dict(zip(OUTPUT_NAMES, runner(x)))
    assert runner.disabled is not None and runner.graph_count == 0
    assert_outputs_close(out, cpu_backend.infer(x), atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no second warning
        out = dict(zip(OUTPUT_NAMES, runner(y)))
    assert runner.graph_count == 0
    assert_outputs_close(out, cpu_backend.infer(y), atol=1e-5, rtol=1e-5)


def test_graphs_are_off_on_the_cpu(bundle, cpu_backend):
    assert not cpu_backend.cuda_graphs and cpu_backend.runner is None and cpu_backend.graph_count == 0
    assert not Backend(bundle, "cpu", cuda_graphs=False).cuda_graphs
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        Backend(bundle, "cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        GraphRunner(cpu_backend.module, "cpu", capture=True)


# ------------------------------------------------------------------------------------ CUDA

@pytest.fixture
def no_tf32():
    """fp32 convolutions and matmuls on both sides, so graph and eager differ by kernel choice only."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def cuda_backends(bundle):
    if CUDA_REASON is not None:
        pytest.skip(CUDA_REASON)
    graphs, eager = Backend(bundle, "cuda").load(), Backend(bundle, "cuda", cuda_graphs=False).load()
    yield graphs, eager
    graphs.close()
    eager.close()


@needs_cuda
@pytest.mark.cuda
def test_cuda_graphs_match_eager(cuda_backends, no_tf32):
    graphs, eager = cuda_backends
    assert graphs.cuda_graphs and graphs.runner is not None and graphs.runner.capture
    assert not eager.cuda_graphs and eager.graph_count == 0
    start = graphs.graph_count
    for (h, w), n in [((96, 128), 1), ((96, 128), 3), ((192, 160), 1), ((192, 160), 3)]:
        x = _images(n, h, w, seed=10 * n + h, device="cuda")
        got, want = graphs.infer(x), eager.infer(x)
        assert all(v.is_cuda and v.shape[0] == n for v in got.values())
        assert_outputs_close(got, want, atol=1e-3, rtol=1e-3)
    assert graphs.runner.disabled is None, graphs.runner.disabled
    assert graphs.graph_count == start + 4
    assert {(1, 96, 128), (4, 96, 128), (1, 192, 160), (4, 192, 160)} <= set(graphs.runner.entries)


@needs_cuda
@pytest.mark.cuda
def test_cuda_graph_outputs_survive_later_replays(cuda_backends, no_tf32):
    graphs, eager = cuda_backends
    a, b = _images(3, 128, 128, seed=20, device="cuda"), _images(4, 128, 128, seed=21, device="cuda")
    start = graphs.graph_count
    out_a = graphs.infer(a)
    saved = {k: v.clone() for k, v in out_a.items()}
    out_b = graphs.infer(b)                              # same key (4, 128, 128): replays the same graph
    assert graphs.graph_count == start + 1
    torch.cuda.synchronize()
    for k in OUTPUT_NAMES:
        assert torch.equal(out_a[k], saved[k]), f"{k} was overwritten by a later replay"
    assert_outputs_close(out_a, eager.infer(a), atol=1e-3, rtol=1e-3)
    assert_outputs_close(out_b, eager.infer(b), atol=1e-3, rtol=1e-3)
    assert_outputs_close(graphs.infer(a), saved, atol=1e-6, rtol=1e-6)   # N=3 again after N=4
    assert graphs.infer(_images(2, 128, 128, seed=22, device="cuda"))["scores"].shape[0] == 2
    assert graphs.graph_count == start + 2                                  # key (2, 128, 128)
    assert graphs.runner.disabled is None, graphs.runner.disabled


@needs_cuda
@pytest.mark.cuda
def test_cuda_graphs_on_a_side_stream_and_from_host_memory(cuda_backends, no_tf32):
    """Replays follow the caller's current stream; a CPU batch is copied into the static input."""
    graphs, eager = cuda_backends
    x = _images(2, 64, 96, seed=30)
    want = eager.infer(x.cuda())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        first = graphs.infer(x)            # capture of (2, 64, 96)
        second = graphs.infer(x.cuda())    # replay
    stream.synchronize()
    assert graphs.runner.disabled is None, graphs.runner.disabled
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert_outputs_close(first, want, atol=1e-3, rtol=1e-3)
    assert_outputs_close(second, want, atol=1e-3, rtol=1e-3)
