"""model/checkpoint.py: save/load without the training loop; loading reads plain data only
(torch.load weights_only=True), and a file that is not a checkpoint is refused naming the file."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.checkpoint import load_model, read_checkpoint, save_checkpoint
from model.network import build_model
from model_fixtures import tiny_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "model" / "checkpoints" / "default.pt"


def test_shipped_checkpoint_loads_as_plain_data():
    """default.pt holds tensors, dicts, lists, tuples, strings and numbers only (weights_only accepts it)."""
    state = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert {"model", "config", "classes"} <= set(state)
    model, config = load_model(SHIPPED)
    assert config["classes"] == list(state["classes"]) and not model.training


def test_round_trip_keeps_weights_and_extras(tmp_path):
    config = tiny_config()
    torch.manual_seed(3)
    model = build_model(config, 2)
    save_checkpoint(tmp_path / "sub" / "m.pt", model, config, ["a", "b"], step=5, history=[{"loss": 1.5}])
    state = read_checkpoint(tmp_path / "sub" / "m.pt")
    assert state["step"] == 5 and state["history"] == [{"loss": 1.5}] and state["classes"] == ["a", "b"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=0)
    assert not list(tmp_path.glob("sub/*.tmp"))  # written atomically


def _jpeg(path):
    ok, data = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    path.write_bytes(data.tobytes())


class _Opaque:
    """An object a checkpoint must not hold: unpickling it would run code."""


@pytest.mark.parametrize("make", [
    lambda p: p.write_text("not a checkpoint\n"),
    _jpeg,
    lambda p: p.write_bytes(b""),
    lambda p: torch.save({"model": {}, "config": {}, "classes": [], "extra": _Opaque()}, p),
], ids=["text", "jpeg", "empty", "arbitrary-object"])
def test_files_that_are_not_checkpoints_are_refused_naming_the_file(tmp_path, make):
    path = tmp_path / "weird name.pt"
    make(path)
    with pytest.raises(ValueError, match="weird name.pt"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match="weird name.pt"):
        load_model(path)


def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path):
    config = tiny_config()
    save_checkpoint(tmp_path / "full.pt", build_model(config, 2), config, ["x", "y"])
    data = (tmp_path / "full.pt").read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 10):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="cut.pt"):
            load_model(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="a_folder"):
        (tmp_path / "a_folder").mkdir()
        load_model(tmp_path / "a_folder")


def test_importing_checkpoint_leaves_the_training_loop_out():
    """Export and evaluation load weights without model.train (its data loader and its process-wide
    OMP_WAIT_POLICY default)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    code = ("import os, sys, model.checkpoint, model.evaluate, export.build_engine; "
            "print('model.train' in sys.modules, 'OMP_WAIT_POLICY' in os.environ)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
