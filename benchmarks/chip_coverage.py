"""Which objects the finer scales never see: per ground-truth size, the share of the objects that some
chip of each finer scale holds whole, at the bundle's chip parameters or at each setting of a --grid.

    python benchmarks/chip_coverage.py --split test --limit 150
    python benchmarks/chip_coverage.py --split test --limit 150 --grid "t1=0.95;k1=5;s1=0.1;t2=0.995;k2=6"

AutoFocus runs scale s + 1 only inside the chips cut from scale s's focus maps, and scale s + 2 only inside
chips cut from those. An object that no chip of a scale holds whole is never seen whole there: where it is
below the coarser scales' valid ranges it is lost, or kept only as a coarser scale's box
(keep_uncovered). sweep.py --breakdown says how much AP each transition costs; this says which objects
it costs, by size, so that you know whether the focus maps miss the tiny objects, the ones near a valid
range's bound, or none. Sizes are sqrt(box area) in original pixels, as the valid ranges; bins by --bins.
Grid keys as in sweep.py (a single value per key gives one setting).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python benchmarks/chip_coverage.py`: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, sweep

DEFAULT_BINS = "0,8,12,16,24,32,48,75,150"
# Chips and boxes are float32 in original pixels; a chip's side may sit a rounding error inside the box it
# was grown around.
TOLERANCE_PX = 0.5


def parse_bins(text: str) -> np.ndarray:
    """"0,8,16" -> the bin edges, strictly increasing, non-negative (the last bin is [last, inf))."""
    try:
        edges = np.array([float(v) for v in text.split(",")], np.float64)
    except ValueError:
        raise ValueError(f"bins: expected comma-separated sizes in original pixels, got {text!r}") from None
    if edges.size == 0 or not np.isfinite(edges).all() or (edges < 0).any() or (np.diff(edges) <= 0).any():
        raise ValueError(f"bins: expected strictly increasing non-negative sizes, got {text!r}")
    return edges


def held_whole(objects: np.ndarray, chips: np.ndarray, tolerance: float = TOLERANCE_PX) -> np.ndarray:
    """(N,) bool: whether some chip (M, 4) [x1, y1, x2, y2] holds object n (N, 4) whole, each side within
    `tolerance` pixels."""
    objects = np.asarray(objects, np.float64).reshape(-1, 4)
    chips = np.asarray(chips, np.float64).reshape(-1, 4)
    if len(objects) == 0 or len(chips) == 0:
        return np.zeros(len(objects), bool)
    o, c = objects[:, None, :], chips[None, :, :]
    inside = ((o[..., 0] >= c[..., 0] - tolerance) & (o[..., 1] >= c[..., 1] - tolerance)
              & (o[..., 2] <= c[..., 2] + tolerance) & (o[..., 3] <= c[..., 3] + tolerance))
    return inside.any(1)


def size_bin(boxes: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each box by sqrt(area): i where edges[i] <= size < edges[i + 1] (the last: size >=
    edges[-1]); -1 below edges[0]."""
    from model.labels import box_sizes
    return np.searchsorted(edges, box_sizes(boxes), side="right") - 1


def coverage(engine, eval_set: common.EvalSet, settings: list, edges: np.ndarray, progress: bool = True) -> list:
    """Per setting: {"objects": [per bin], "held": [[per bin] per finer scale]} over the eval set."""
    finer = len(engine.params.scales) - 1
    counts = [{"objects": np.zeros(len(edges), np.int64), "held": np.zeros((finer, len(edges)), np.int64)}
              for _ in settings]
    for info, image in tqdm(list(zip(eval_set.infos, eval_set.images)), desc="chips", unit="image",
                            disable=not progress, file=sys.stderr):
        boxes = eval_set.coco.boxes.get(info["id"], np.zeros((0, 4), np.float32))
        which = size_bin(boxes, edges)
        keep = which >= 0
        boxes, which = boxes[keep], which[keep]
        with common.network_tap(engine, cache={}):  # scale 1 runs once for every setting
            for count, overrides in zip(counts, settings):  # sweep.setting: the engine's overrides
                det = engine(image, mode="autofocus", **overrides)
                np.add.at(count["objects"], which, 1)
                for s in range(finer):
                    np.add.at(count["held"][s], which[held_whole(boxes, det.chips[s + 1])], 1)
    return [{"objects": c["objects"].tolist(), "held": c["held"].tolist()} for c in counts]


def format_coverage(result: dict, edges: np.ndarray) -> str:
    finer = len(result["held"])
    names = [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(edges) - 1)] + [f">= {edges[-1]:g}"]
    rows = []
    for i, name in enumerate(names):
        n = result["objects"][i]
        rows.append([name, n] + [f"{result['held'][s][i] / n:.3f}" if n else "-" for s in range(finer)])
    total = sum(result["objects"])
    rows.append(["all", total] + [f"{sum(result['held'][s]) / total:.3f}" if total else "-" for s in range(finer)])
    return common.format_table(["size (px)", "objects"] + [f"held by a scale-{s + 2} chip" for s in range(finer)],
                               rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/chip_coverage.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(p)
    p.add_argument("--grid", help="chip parameters as in sweep.py (default: the bundle's)")
    p.add_argument("--bins", default=DEFAULT_BINS, help=f"size bin edges, original px (default {DEFAULT_BINS})")
    common.add_output_arguments(p, "the counts")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        edges = parse_bins(args.bins)
        engine = common.open_engine(args.bundle, args.backend, args.device)
        if len(engine.params.scales) < 2:
            raise ValueError("bundle: one scale only; there are no finer scales to cover")
        base = sweep.setting(engine.params.chip_params, engine.params.coarse_scale)
        settings = (sweep.grid_settings(sweep.parse_grid(args.grid, len(base["chip_params"])), base["chip_params"],
                                        base["coarse_scale"]) if args.grid else [base])
        sweep.check_settings(engine, settings)
        eval_set = common.eval_set_from_args(args)
        results = coverage(engine, eval_set, settings, edges, progress=not args.no_progress)
    except common.USER_ERRORS as e:
        return common.user_error(e)
    ranges = ", ".join(f"scale {s + 1} [{lo:g}, " + (f"{hi:g}]" if np.isfinite(hi) else "inf)")
                       for s, (lo, hi) in enumerate(engine.params.valid_ranges))
    print(f"{len(eval_set.infos)} images from {eval_set.coco.annotations_path}; backend {engine.backend_name} on "
          f"{engine.device}; objects held whole by a chip of each finer scale, by size (sqrt area, original px; "
          f"valid ranges {ranges})")
    for setting, result in zip(settings, results):
        print(f"\n{sweep.label(setting)}")
        print(format_coverage(result, edges))
    if args.json:
        common.write_json(args.json, {
            "bundle": str(engine.bundle.folder), "annotations": str(eval_set.coco.annotations_path),
            "images": len(eval_set.infos), "backend": engine.backend_name, "device": engine.device,
            "grid": args.grid, "bins": edges.tolist(), "machine": common.machine(), "versions": common.versions(),
            "settings": [{**s, "label": sweep.label(s), **r} for s, r in zip(settings, results)]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
