"""Average the weights of checkpoints that were trained on from one another (a "model soup").

    python -m model.average_weights model/checkpoints/default.pt runs/focus_weight4/final.pt --out soup.pt

Why: two runs trained on from the same checkpoint stay in one basin of the loss, and the element-wise mean
of their weights is often a better network than either (Wortsman et al., "Model soups", ICML 2022). The
shipped model is such a mean (docs/experiments.md, "The two models' weights averaged"). Every
floating-point tensor is averaged in float64, BatchNorm's running statistics included (the mean of two
networks' statistics is what the mean network sees closely enough for these small steps); integer tensors
(BatchNorm's step counters) come from the last checkpoint. The result carries the last checkpoint's config
and training state (so `model.train --resume` continues that run's schedule) and every source's provenance
entries, plus a "weight_average" record naming the sources.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from model.checkpoint import read_checkpoint, save_checkpoint
from model.network import build_model

# a checkpoint's own entries, rebuilt here; everything else is provenance or training state
_OWN_KEYS = ("version", "model", "config", "classes")


def average_state_dicts(states: list[dict], weights: list[float]) -> dict:
    """The weighted mean of state dicts with the same keys and shapes (ValueError naming the first that
    differs); float tensors in float64 then cast back, other tensors from the last state dict."""
    if len(states) != len(weights) or len(states) < 2:
        raise ValueError(f"weights: need one weight per checkpoint and at least two checkpoints "
                         f"({len(states)} checkpoints, {len(weights)} weights)")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"weights: must be non-negative and sum to 1, got {weights}")
    keys = list(states[-1])
    for i, state in enumerate(states):
        if set(state) != set(keys):
            extra = sorted(set(state) ^ set(keys))[:5]
            raise ValueError(f"checkpoint {i + 1}: its weights differ in names from the last one's ({extra})")
    mean = {}
    for key in keys:
        tensors = [s[key] for s in states]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"weights: {key} has different shapes {sorted(shapes)}")
        if tensors[-1].is_floating_point():
            total = sum(w * t.double() for w, t in zip(weights, tensors))
            mean[key] = total.to(tensors[-1].dtype)
        else:
            mean[key] = tensors[-1].clone()
    return mean


def average_checkpoints(paths: list[Path], out: Path, weights: list[float] | None = None) -> dict:
    """Write the average of the checkpoints at `paths` to `out` (refused if it exists); returns its record."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out: {out} exists; choose a new path (nothing is overwritten)")
    weights = weights or [1.0 / len(paths)] * len(paths)
    sources = [read_checkpoint(p) for p in paths]
    last = sources[-1]
    for p, s in zip(paths, sources):
        if list(s["classes"]) != list(last["classes"]):
            raise ValueError(f"{p}: classes {s['classes']} differ from {paths[-1]}'s {last['classes']}")
    # one network: the same weight names and shapes (checked here), built from the last config
    mean = average_state_dicts([s["model"] for s in sources], weights)
    model = build_model(last["config"], len(last["classes"]))
    model.load_state_dict(mean)
    extra = {}
    for s in sources:  # provenance of every source; the last one's training state wins where keys repeat
        extra.update({k: v for k, v in s.items() if k not in _OWN_KEYS})
    record = {"sources": [str(p) for p in paths], "weights": list(weights),
              "steps": [s.get("step") for s in sources],
              "command": "python -m model.average_weights " + " ".join(str(p) for p in paths)
                         + f" --out {out}" + ("" if len(set(weights)) == 1 else
                                              " --weights " + ",".join(str(w) for w in weights))}
    extra["weight_average"] = record
    save_checkpoint(out, model, last["config"], last["classes"], **extra)
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="two or more checkpoints of one network")
    ap.add_argument("--out", type=Path, required=True, help="new checkpoint file (must not exist)")
    ap.add_argument("--weights", default=None, help="comma-separated, one per checkpoint, summing to 1 "
                                                    "(default: equal)")
    args = ap.parse_args(argv)
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
        record = average_checkpoints(args.checkpoints, args.out, weights)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: the mean of {len(record['sources'])} checkpoints, weights {record['weights']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
