"""Checkpoints: the trained network's weights with its config and class names, saved and loaded
without the training loop (export/ and model/evaluate.py import this, not model/train.py).

A checkpoint is a dict {"version", "model" (state dict), "config", "classes", ...training extras}
written with torch.save and read with torch.load(weights_only=True): tensors, dicts, lists, tuples,
strings and numbers only, so loading a file runs no code from it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from model.network import AutoFocusNet, build_model

CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, model, config: dict, classes: list[str], **extra) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "config": config,
             "classes": list(classes), **extra}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint


def read_checkpoint(path) -> dict:
    """The checkpoint's dict. FileNotFoundError when there is no such file; ValueError naming the file
    when it is not a checkpoint (another format, truncated, objects other than plain data)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt files raise many different errors
        raise ValueError(f"checkpoint_path: {path} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not {"model", "config", "classes"} <= set(state):
        raise ValueError(f"checkpoint_path: {path} lacks model/config/classes entries")
    return state


def load_model(checkpoint_path) -> tuple[AutoFocusNet, dict]:
    """(model in deploy mode, config with "classes") from a checkpoint written by training."""
    state = read_checkpoint(checkpoint_path)
    config = dict(state["config"])
    config["classes"] = list(state["classes"])
    model = build_model(config, len(config["classes"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"checkpoint_path: {checkpoint_path} weights do not fit the configured network ({e})") from e
    return model.deploy(), config
