"""The pure-logic parts of the TensorRT path, which run without TensorRT or a GPU: the timing cache's
key and atomic write, the profiles' shapes, the plan/host compatibility check that lets backend="auto"
pass over a plan from another TensorRT version or GPU with a one-line reason, and the dtype map."""
import dataclasses
import os
import sys
import types

import pytest
import torch

from export import tensorrt_build
from runtime import backends
from runtime.backends import tensorrt as trt_backend


def test_timing_cache_file_is_keyed_by_gpu_and_version(tmp_path):
    a = tensorrt_build.timing_cache_file(tmp_path, "NVIDIA H200", "10.9.0.34")
    assert a.parent == tmp_path
    assert a == tensorrt_build.timing_cache_file(tmp_path, "NVIDIA H200", "10.9.0.34")
    others = {tensorrt_build.timing_cache_file(tmp_path, g, v)
              for g, v in [("NVIDIA H100 80GB HBM3", "10.9.0.34"), ("NVIDIA H200", "11.0.0"), (None, "10.9.0.34")]}
    assert a not in others and len(others) == 3
    # A GPU name with spaces or slashes still names one file in the folder.
    odd = tensorrt_build.timing_cache_file(tmp_path, "GPU a/b c", "10.0")
    assert odd.parent == tmp_path and "/" not in odd.name and " " not in odd.name


def test_profiles_are_tuned_at_the_max_batch():
    lo, opt, hi = tensorrt_build.profile_shapes(256, 384, 6)
    assert lo == (1, 3, 256, 384) and opt == hi == (6, 3, 256, 384)
    assert tensorrt_build.profile_shapes(64, 64, 1) == ((1, 3, 64, 64),) * 3
    with pytest.raises(ValueError, match="max_batch"):
        tensorrt_build.profile_shapes(64, 64, 0)


def test_write_atomically_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "cache.bin"
    tensorrt_build.write_atomically(target, b"old")
    assert target.read_bytes() == b"old"

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        tensorrt_build.write_atomically(target, b"new contents")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.bin"]  # no temporary left behind
    tensorrt_build.write_atomically(target, bytearray(b"new"))
    assert target.read_bytes() == b"new"


def test_plan_mismatch_names_version_and_gpu():
    info = {"file": "model_fp32.plan", "tensorrt": "10.9.0.34", "gpu": "NVIDIA H200"}
    assert trt_backend.plan_mismatch(info, "10.9.0.34", "NVIDIA H200") is None
    version = trt_backend.plan_mismatch(info, "10.13.0", "NVIDIA H200")
    assert "10.9.0.34" in version and "10.13.0" in version and "\n" not in version
    gpu = trt_backend.plan_mismatch(info, "10.9.0.34", "NVIDIA A100-SXM4-80GB")
    assert "NVIDIA H200" in gpu and "A100" in gpu and "\n" not in gpu
    # A bundle.json that does not record them: loading decides.
    assert trt_backend.plan_mismatch({"file": "x.plan"}, "10.9.0.34", "NVIDIA H200") is None


def test_engine_dtypes_map_to_torch():
    assert trt_backend.torch_dtype("DataType.FLOAT") is torch.float32
    assert trt_backend.torch_dtype(types.SimpleNamespace(name="HALF")) is torch.float16
    assert trt_backend.torch_dtype("INT64") is torch.int64
    with pytest.raises(RuntimeError, match="FP8"):
        trt_backend.torch_dtype("DataType.FP8")


@pytest.fixture
def fake_gpu_host(monkeypatch):
    """A host that looks like a GPU machine with TensorRT 10.9.0.34 on an H200 (neither exists here):
    what backend selection reads of the environment, and nothing else."""
    monkeypatch.setattr(backends, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9.0.34"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")


def _with_plan(bundle, **info):
    return dataclasses.replace(bundle, engines=[{"file": "model_fp32.plan", "precision": bundle.precision, **info}])


def test_auto_passes_over_a_foreign_plan_with_a_one_line_reason(bundle, fake_gpu_host):
    foreign = _with_plan(bundle, tensorrt="10.3.0", gpu="NVIDIA H200")
    name, device, notes = backends.select(foreign, "auto")
    assert (name, device) != ("tensorrt", "cuda")
    assert notes[0].startswith("tensorrt on cuda: model_fp32.plan was built by TensorRT 10.3.0")
    assert "\n" not in notes[0]
    other_gpu = _with_plan(bundle, tensorrt="10.9.0.34", gpu="NVIDIA H100 80GB HBM3")
    assert "H100" in backends.select(other_gpu, "auto")[2][0]
    with pytest.raises(ValueError, match="built by TensorRT 10.3.0"):
        backends.select(foreign, "tensorrt")  # asked for by name: the reason, as an error
    # The plan of this host's version and GPU is chosen.
    assert backends.select(_with_plan(bundle, tensorrt="10.9.0.34", gpu="NVIDIA H200"), "auto")[:2] == \
        ("tensorrt", "cuda")
