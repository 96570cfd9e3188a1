"""model/average_weights.py: the mean checkpoint against a float64 NumPy mean of the sources' tensors; what
it carries over; the checkpoints it refuses, and that it never overwrites a file."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.average_weights import average_checkpoints
from model.checkpoint import load_model, read_checkpoint, save_checkpoint
from model.network import build_model
from model_fixtures import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _checkpoint(path, seed, classes=("a", "b"), config=None, **extra):
    config = config or tiny_config()
    torch.manual_seed(seed)
    model = build_model(config, len(classes))
    with torch.no_grad():  # BatchNorm statistics away from their initial values, so averaging them shows
        for name, buf in model.named_buffers():
            if buf.is_floating_point():
                buf.copy_(torch.rand_like(buf) + 0.5)
            else:
                buf.fill_(seed * 10)
    save_checkpoint(path, model, config, list(classes), **extra)
    return path


def test_mean_matches_float64_numpy(tmp_path):
    a = _checkpoint(tmp_path / "a.pt", 1, step=10, parent_focus_refit={"minutes": 3})
    b = _checkpoint(tmp_path / "b.pt", 2, step=20, history=[{"loss": 1.0}])
    record = average_checkpoints([a, b], tmp_path / "mean.pt", [0.25, 0.75])
    out = read_checkpoint(tmp_path / "mean.pt")
    sa, sb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    floats = 0
    for key, value in out["model"].items():
        if value.is_floating_point():
            expected = 0.25 * sa[key].numpy().astype(np.float64) + 0.75 * sb[key].numpy().astype(np.float64)
            np.testing.assert_allclose(value.numpy(), expected, rtol=1e-6, atol=1e-7, err_msg=key)
            floats += 1
        else:
            assert torch.equal(value, sb[key]), key  # step counters: the last checkpoint's
    assert floats > 20
    # the last source's training state, every source's provenance, and a record of the average
    assert out["step"] == 20 and out["history"] == [{"loss": 1.0}] and out["parent_focus_refit"] == {"minutes": 3}
    assert out["weight_average"] == record and record["weights"] == [0.25, 0.75] and record["steps"] == [10, 20]
    load_model(tmp_path / "mean.pt")  # loads as a network


def test_cli_refuses_existing_output_and_mismatched_checkpoints(tmp_path):
    a = _checkpoint(tmp_path / "a.pt", 1)
    b = _checkpoint(tmp_path / "b.pt", 2)
    other_classes = _checkpoint(tmp_path / "c.pt", 3, classes=("a", "b", "c"))
    wider = tiny_config()
    wider["network"]["head_width"] = 32
    other_net = _checkpoint(tmp_path / "d.pt", 4, config=wider)
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"the user's file")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "model.average_weights", *map(str, args)], cwd=REPO,
                              capture_output=True, text=True)

    r = run(a, b, "--out", taken)
    assert r.returncode == 2 and "exists" in r.stderr and taken.read_bytes() == b"the user's file"
    r = run(a, other_classes, "--out", tmp_path / "x.pt")
    assert r.returncode == 2 and "classes" in r.stderr and not (tmp_path / "x.pt").exists()
    r = run(a, other_net, "--out", tmp_path / "x.pt")
    assert r.returncode == 2 and "different shapes" in r.stderr
    r = run(a, b, "--out", tmp_path / "x.pt", "--weights", "0.7,0.7")
    assert r.returncode == 2 and "sum to 1" in r.stderr
    r = run(a, tmp_path / "missing.pt", "--out", tmp_path / "x.pt")
    assert r.returncode == 2 and "missing.pt" in r.stderr
    r = run(a, b, "--out", tmp_path / "x.pt")
    assert r.returncode == 0, r.stderr
    assert read_checkpoint(tmp_path / "x.pt")["weight_average"]["weights"] == [0.5, 0.5]


def test_different_names_are_refused(tmp_path):
    from model.average_weights import average_state_dicts
    a = {"w": torch.zeros(2), "v": torch.zeros(1)}
    with pytest.raises(ValueError, match="differ in names"):
        average_state_dicts([a, {"w": torch.zeros(2)}], [0.5, 0.5])
    with pytest.raises(ValueError, match="different shapes"):
        average_state_dicts([a, {"w": torch.zeros(3), "v": torch.zeros(1)}], [0.5, 0.5])
