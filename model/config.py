"""Training/model configuration: a flat-ish JSON (model/configs/default.json holds every parameter).

A user config may override any subset of the default's keys; unknown keys are an error so typos do
not silently fall back to defaults.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from model.focus_loss import FOCUS_LOSSES

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.json"


def _merge(base: dict, override: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ValueError(f"config: unknown key {where}{key!r} (known: {sorted(base)})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config: {where}{key!r} expected an object, got {type(value).__name__}")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def default_config() -> dict:
    with open(DEFAULT_CONFIG) as f:
        return json.load(f)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """The default config, updated by the JSON file at `path` (if any), then by `overrides`."""
    config = default_config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config path: no such file {path}")
        try:
            with open(path) as f:
                user = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"config path: {path} is not valid JSON ({e})") from e
        config = _merge(config, user, "")
    if overrides:
        config = _merge(config, overrides, "")
    validate_config(config)
    return config


def validate_config(config: dict) -> None:
    chips = config["chips"]
    if len(chips["scales"]) != len(chips["valid_ranges"]):
        raise ValueError("config: chips.scales and chips.valid_ranges must have the same length")
    if chips["chip_size"] % config["input"]["size_divisor"]:
        raise ValueError(f"config: chips.chip_size must be a multiple of {config['input']['size_divisor']}")
    fl = config["focus_labels"]
    if not 0 <= fl["a"] <= fl["b"] <= fl["c"]:
        raise ValueError(f"config: focus_labels expects 0 <= a <= b <= c, got {fl}")
    # Per-transition focus heads (issue 21): one entry per transition in both, null where a transition reads the
    # paper's head; a head without labels would train on nothing, labels without a head label nothing.
    heads, labels = config["network"]["transition_heads"], fl["transitions"]
    if (heads or labels) and [h is None for h in heads] != [t is None for t in labels]:
        raise ValueError(f"config: network.transition_heads and focus_labels.transitions must name the same "
                         f"transitions (null where the paper's head serves), got {heads} and {labels}")
    if any(t is not None and not (isinstance(t, dict) and t.get("b_original", 0) > 0) for t in labels):
        raise ValueError(f"config: focus_labels.transitions entries are null or {{\"b_original\": px > 0}}, got {labels}")
    if config["loss"]["focus_loss"] not in FOCUS_LOSSES:
        raise ValueError(f"config: loss.focus_loss must be one of {FOCUS_LOSSES}, got {config['loss']['focus_loss']!r}")
    if config["optim"]["optimizer"] not in ("adamw", "sgd"):
        raise ValueError(f"config: optim.optimizer must be 'adamw' or 'sgd', got {config['optim']['optimizer']!r}")
    if config["optim"]["batch_size"] < 1:
        raise ValueError("config: optim.batch_size must be >= 1")
