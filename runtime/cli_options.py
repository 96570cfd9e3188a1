"""The options of `python -m runtime` that shape its detections, and where its default bundle is.

Kept apart from runtime/__main__.py (which reads the inputs and writes the outputs) so that these rules
have one home: which options each mode uses, the score threshold and detection cap, and the search for
the default bundle.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from .detections import Detections

DEFAULT_BUNDLE = Path("bundles") / "default"
# The checkout this package runs from (an editable install or PYTHONPATH=.), where `make run` and
# `python export/build_engine.py` write the default bundle. From an installed wheel it is site-packages,
# which holds no bundle, so the current folder is tried next.
CHECKOUT = Path(__file__).resolve().parents[1]


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a score between 0 and 1, got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"expected a score between 0 and 1, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--score-threshold and --max-detections (the detections written and drawn)."""
    parser.add_argument("--score-threshold", type=_score, default=0.0, metavar="S",
                        help="keep detections scoring at least S (0-1; default 0: every detection the "
                             "bundle keeps, down to its Soft-NMS floor)")
    parser.add_argument("--max-detections", type=positive_int, default=None, metavar="N",
                        help="at most N detections an image, the best first (default: the bundle's "
                             "max_detections)")


def engine_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The engine parameters the options set; an option the chosen mode does not use is an error."""
    if args.mode == "single" and args.scale is None:
        parser.error("--mode single needs --scale N: which of the bundle's scales runs (1 = the coarsest)")
    if args.mode != "single" and args.scale is not None:
        parser.error(f"--scale applies to --mode single only; --mode {args.mode} runs every scale it needs")
    overrides = {}
    if args.scale is not None:
        overrides["scale"] = args.scale
    if args.max_detections is not None:
        overrides["max_detections"] = args.max_detections
    return overrides


def bundle_folder(value, checkout: Path | None = None, cwd: Path | None = None) -> Path:
    """--bundle as given, or the default bundle: <checkout>/bundles/default, else ./bundles/default.

    Raises FileNotFoundError saying how to build one or name one when neither exists."""
    if value is not None:
        return Path(value)
    checkout = CHECKOUT if checkout is None else Path(checkout)
    cwd = Path.cwd() if cwd is None else Path(cwd)
    candidates = [checkout / DEFAULT_BUNDLE, cwd / DEFAULT_BUNDLE]
    for folder in candidates:
        if folder.is_dir():
            return folder
    tried = " or ".join(dict.fromkeys(str(c) for c in candidates))
    raise FileNotFoundError(f"no --bundle given and no default bundle at {tried}: build one with "
                            "`python export/build_engine.py` in the checkout (or `make run`), or pass "
                            "--bundle FOLDER")


def above_threshold(detections: Detections, score_threshold: float) -> Detections:
    """The detections scoring at least score_threshold, in their order; the chips stay as they are."""
    keep = detections.scores >= np.float32(score_threshold)
    return Detections(detections.boxes[keep], detections.scores[keep], detections.labels[keep],
                      detections.chips)
