"""A tiny network config shared by the checkpoint, refit and averaging tests: the shipped architecture with
a few channels, so that building, saving and training it take milliseconds."""
from __future__ import annotations

TINY_NET = {"widths": [8, 16, 16, 32, 32], "blocks": [1, 1, 1, 1, 1], "fpn_width": 16, "head_width": 16,
            "head_convs": 1, "focus_width": 16}


def tiny_config() -> dict:
    """model/configs/default.json with TINY_NET as its network."""
    from model.config import load_config
    return load_config(overrides={"network": TINY_NET})
