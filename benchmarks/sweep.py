"""The paper's Fig. 7 on our model: AP against the pixels AutoFocus processes, over a grid of FocusChip
parameters, with the Pareto front and the best setting for a pixel budget.

    python benchmarks/sweep.py                                   # bundles/default, generated val split
    python benchmarks/sweep.py --grid "t1=0.01,0.05;t2=0.2,0.5;d=3;k1=12,16" --budget 0.3 --png sweep.png

Grid keys (per scale transition i = 1, 2, ...): t<i> threshold, d<i> dilation (odd), k<i> min_size in
cells of the coarser focus map, s<i> box_score (detection-guided chips, runtime/params.py; "none": off),
m<i> box_max (the largest box those paint, original px; "none": the finer scale's valid range),
r<i> merge (Algorithm 1's step 5: touching or cheaper, runtime/ops/maps.py focus_chips);
"t", "d", "k", "s", "m", "r" without a number are one axis that sets every transition to the same value;
c AutoFocus's coarse scale, min_side x max_side (c=480x512,570x608; "none": the bundle's; runtime/params.py
coarse_scale: scale 1 at that size for AutoFocus, sniper and the single scales keep the bundle's). A
parameter not given keeps the bundle's value. Default grid: t1 in {0.01, 0.02, 0.05, 0.1}, t2 in {0.1, 0.2,
0.3, 0.5}, d in {1, 3}: 32 settings.

Each point: pixels = the network-input pixels (real, not padded) AutoFocus runs over the whole set,
as a fraction of sniper's (the whole image at every scale); AP etc. from pycocotools. The reference
points are sniper (ratio 1) and each single scale.

Cost: the network is deterministic, so its outputs are reused wherever the same input comes back
(common.network_tap's cache, keyed on the batch's bytes, per image): scale 1 runs once per image for
the whole grid (and is shared with sniper and single1; once per coarse scale where c is an axis), scale 2
once per distinct transition-1 setting (the grid is walked with c, then transition 1 outermost), and
sniper's whole-image scales 2 and 3 are shared with single2 and single3. Only the chips' post-processing and pycocotools run per point.
Images run one per engine call (batch 1), so the cache keys are per image.

--breakdown: where the bundle's setting loses AP against the pyramid. Each transition is opened in turn
(threshold 0: the finer scale runs on the whole of every region of the coarser one) with the others as
the bundle sets them; the AP that opening recovers is what that transition's FocusChips cost, and the
pixels it adds are what they save. With every transition open the cascade runs sniper's inputs, so
its AP must equal sniper's (printed as a check). Use it to see which threshold to move on your data.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

from tqdm import tqdm

if __package__ in (None, ""):  # run as `python benchmarks/sweep.py`: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from runtime.ops.maps import DEFAULT_MERGE, MERGE_RULES

DEFAULT_GRID = "t1=0.01,0.02,0.05,0.1;t2=0.1,0.2,0.3,0.5;d=1,3"
KEYS = {"t": "threshold", "d": "dilation", "k": "min_size", "s": "box_score", "m": "box_max", "r": "merge"}
COARSE_KEY = "c"  # AutoFocus's coarse scale: one value for the whole cascade, not per transition


# ------------------------------------------------------------------------------------ Pareto / budget

def _key(point, name: str):
    return point[name] if isinstance(point, dict) else getattr(point, name)


def pareto_front(points, cost: str = "pixels_ratio", gain: str = "AP") -> list:
    """The points no other point beats: none has cost <= and gain >= with one of them strictly better.
    Points are dicts (or objects) with `cost` and `gain` entries. Points with the same cost and gain
    are all kept (they are equally good). Returned by ascending cost, then descending gain, then input
    order; on the front, gain strictly rises with cost between distinct points."""
    pts = list(points)
    front = []
    for i, p in enumerate(pts):
        c, g = _number(_key(p, cost), cost), _number(_key(p, gain), gain)
        dominated = any(_key(q, cost) <= c and _key(q, gain) >= g and (_key(q, cost) < c or _key(q, gain) > g)
                        for j, q in enumerate(pts) if j != i)
        if not dominated:
            front.append((c, -g, i, p))
    return [p for *_, p in sorted(front, key=lambda t: t[:3])]


def best_within_budget(points, budget: float, cost: str = "pixels_ratio", gain: str = "AP"):
    """The most accurate point with cost <= budget (ties: the cheaper, then the first given).
    Returns None when no point fits the budget; raises ValueError for a budget that is not a positive
    finite number."""
    budget = _number(budget, "budget")
    if budget <= 0:
        raise ValueError(f"budget: expected a positive fraction of the pyramid's pixels, got {budget}")
    fitting = [(i, p) for i, p in enumerate(points) if _key(p, cost) <= budget]
    if not fitting:
        return None
    return min(fitting, key=lambda ip: (-_key(ip[1], gain), _key(ip[1], cost), ip[0]))[1]


def cheapest_within_loss(points, reference: float, max_loss: float, cost: str = "pixels_ratio", gain: str = "AP"):
    """The cheapest point whose gain is at least reference - max_loss (ties: the more accurate, then the
    first given): "the fewest pixels that lose at most 0.5 AP against the pyramid". Returns None when
    no point is accurate enough; raises ValueError for a max_loss that is not a finite number >= 0."""
    max_loss, reference = _number(max_loss, "max_loss"), _number(reference, "reference")
    if max_loss < 0:
        raise ValueError(f"max_loss: expected AP points >= 0, got {max_loss}")
    close = [(i, p) for i, p in enumerate(points) if _key(p, gain) >= reference - max_loss]
    if not close:
        return None
    return min(close, key=lambda ip: (_key(ip[1], cost), -_key(ip[1], gain), ip[0]))[1]


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return float(value)


# ------------------------------------------------------------------------------------ grid

def parse_grid(text: str, transitions: int) -> dict:
    """"t1=0.01,0.02;d=1,3" -> {(transitions, parameter name): [values]}, transitions a tuple of 0-based
    indices: (0,) for "t1", all of them for "d" (one axis: every transition takes the same value);
    "c=570x608,none" -> {((), "coarse_scale"): [[570.0, 608.0], None]}."""
    grid, taken = {}, set()
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, _, values = part.partition("=")
        name = name.strip()
        if name == COARSE_KEY and values:
            if ((), "coarse_scale") in grid:
                raise ValueError(f"grid: {name!r} is given twice")
            grid[((), "coarse_scale")] = _coarse_values(values)
            continue
        if not values or not name or name[0] not in KEYS or not (name[1:] == "" or name[1:].isdigit()):
            raise ValueError(f"grid: expected entries like t1=0.01,0.02 (keys t, d, k, s, m, r with an optional "
                             f"transition number; c=570x608 without one), got {part!r}")
        which = tuple(range(transitions)) if name[1:] == "" else (int(name[1:]) - 1,)
        if not all(0 <= w < transitions for w in which):
            raise ValueError(f"grid: {name!r} names transition {name[1:]}, but the bundle has {transitions} "
                             f"(1..{transitions})")
        kind = KEYS[name[0]]
        try:
            parsed = [_grid_value(kind, v.strip()) for v in values.split(",") if v.strip()]
        except ValueError:
            what = {"threshold": "numbers", "box_score": "numbers or none", "box_max": "numbers or none",
                    "merge": f"rules ({', '.join(MERGE_RULES)})"}.get(kind, "integers")
            raise ValueError(f"grid: {name}: expected comma-separated {what}, got {values!r}") from None
        if not parsed:
            raise ValueError(f"grid: {name}: no values")
        if any((w, kind) in taken for w in which):
            raise ValueError(f"grid: {name!r} sets a parameter an earlier entry already sets")
        taken.update((w, kind) for w in which)
        grid[(which, kind)] = parsed
    return grid


def _coarse_values(text: str) -> list:
    """"480x512,570x608,none" -> [[480.0, 512.0], [570.0, 608.0], None] (min_side x max_side)."""
    out = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        if item.lower() == "none":
            out.append(None)
            continue
        try:
            lo, hi = (float(v) for v in item.lower().split("x"))
        except ValueError:
            lo = hi = math.nan
        if not (0 < lo <= hi < math.inf):
            raise ValueError(f"grid: c: expected min_side x max_side with 0 < min_side <= max_side (e.g. "
                             f"570x608) or none, got {item!r}")
        out.append([lo, hi])
    if not out:
        raise ValueError("grid: c: no values")
    return out


def _grid_value(kind: str, text: str):
    if kind == "merge":
        if text not in MERGE_RULES:
            raise ValueError(text)
        return text
    if kind in ("box_score", "box_max"):
        return None if text.lower() == "none" else float(text)
    return float(text) if kind == "threshold" else int(text)


def setting(chip_params: list, coarse_scale=None) -> dict:
    """One point of the sweep, as the engine's per-call overrides (runtime/params.py)."""
    return {"chip_params": [dict(p) for p in chip_params],
            "coarse_scale": None if coarse_scale is None else [float(v) for v in coarse_scale]}


def grid_settings(grid: dict, base: list, coarse_scale=None) -> list[dict]:
    """Every combination, as settings (full chip_params lists; the bundle's values, and its coarse_scale,
    where the grid says nothing), with the coarse scale, then transition 1 varying slowest so settings
    that share them are adjacent."""
    axes = sorted(grid)  # () (the coarse scale) first, then by first transition
    settings = []
    for combo in itertools.product(*(grid[a] for a in axes)):
        params, coarse = [dict(p) for p in base], coarse_scale
        for (transitions, name), value in zip(axes, combo):
            if name == "coarse_scale":
                coarse = value
            for t in transitions:
                params[t][name] = value
        settings.append(setting(params, coarse))
    return settings


def breakdown_settings(base: dict) -> list[tuple[str, dict]]:
    """[(name, setting)]: the bundle's setting, each transition opened alone (threshold 0), all open (the
    coarse scale kept)."""
    chips = base["chip_params"]
    opened = lambda which: setting([dict(p, threshold=0.0) if i in which else p  # noqa: E731
                                    for i, p in enumerate(chips)], base["coarse_scale"])
    return ([("bundle", setting(chips, base["coarse_scale"]))]
            + [(f"open {i + 1}", opened({i})) for i in range(len(chips))]
            + [("open all", opened(set(range(len(chips)))))])


def same_setting(point: dict, s: dict) -> bool:
    return point["chip_params"] == s["chip_params"] and point.get("coarse_scale") == s["coarse_scale"]


def breakdown_rows(points: list, named: list[tuple[str, dict]], sniper: dict) -> list[dict]:
    """Per breakdown setting: its point, and against the bundle's point the AP it recovers and the
    pixels it adds (fractions of sniper's)."""
    find = lambda s: next(p for p in points if same_setting(p, s))  # noqa: E731
    base = find(named[0][1])
    rows = []
    for name, params in named:
        p = find(params)
        rows.append({"name": name, "point": p["name"], "pixels_ratio": p["pixels_ratio"], "AP": p["AP"],
                     "APs": p["APs"], "APm": p["APm"], "AP_recovered": p["AP"] - base["AP"],
                     "pixels_added": p["pixels_ratio"] - base["pixels_ratio"],
                     "AP_vs_sniper": p["AP"] - sniper["AP"]})
    return rows


def format_breakdown(rows: list) -> str:
    headers = ["setting", "px/sniper", "AP", "APs", "APm", "AP - sniper", "AP recovered", "px added"]
    return common.format_table(headers, [[r["name"], f"{r['pixels_ratio']:.3f}", f"{r['AP']:.2f}", f"{r['APs']:.2f}",
                                          f"{r['APm']:.2f}", f"{r['AP_vs_sniper']:+.2f}",
                                          f"{r['AP_recovered']:+.2f}", f"{r['pixels_added']:+.3f}"]
                                         for r in rows])


def check_settings(engine, settings: list) -> None:
    """The engine's own checks of each setting's chip_params (odd dilation, ...), before the long part:
    ValueError/TypeError naming the parameter."""
    from runtime import params
    for s in settings:
        params.resolve(params.bundle_values(engine.bundle), s)


def label(s: dict) -> str:
    coarse = s.get("coarse_scale")
    chips = " ".join(f"t{i + 1}={p['threshold']:g} d{i + 1}={p['dilation']} k{i + 1}={p['min_size']}"
                     + (f" s{i + 1}={p['box_score']:g}" if p.get("box_score") is not None else "")
                     + (f" m{i + 1}={p['box_max']:g}" if p.get("box_max") is not None else "")
                     + (f" r{i + 1}={p['merge']}" if p.get("merge", DEFAULT_MERGE) != DEFAULT_MERGE else "")
                     for i, p in enumerate(s["chip_params"]))
    return (f"c={coarse[0]:g}x{coarse[1]:g} " if coarse is not None else "") + chips


# ------------------------------------------------------------------------------------ the sweep

def sweep(engine, eval_set: common.EvalSet, settings: list, progress: bool = True) -> dict:
    """Runs sniper, every single scale and every setting on every image; returns
    {"sniper": point, "single": [points], "points": [points]} where a point holds its pixels (real and
    padded, whole set), pixels_ratio / padded_ratio against sniper and the COCO metrics."""
    scales = len(engine.params.scales)
    refs = [("sniper", "sniper", {})] + [(f"single{s}", "single", {"scale": s}) for s in range(1, scales + 1)]
    runs = [(name, mode, kw) for name, mode, kw in refs] + \
           [(f"setting{i}", "autofocus", s) for i, s in enumerate(settings)]
    dets = {name: {} for name, _, _ in runs}
    pix = {name: [0, 0] for name, _, _ in runs}
    for info, image in tqdm(list(zip(eval_set.infos, eval_set.images)), desc="sweep", unit="image",
                            disable=not progress, file=sys.stderr):
        with common.network_tap(engine, cache={}):  # per image: memory stays bounded
            for name, mode, kw in runs:
                dets[name][info["id"]] = engine(image, mode=mode, **kw)
                real, padded = common.pixels(engine.last_stats)
                pix[name][0] += real
                pix[name][1] += padded
    base_real, base_padded = pix["sniper"]

    def point(name, **extra):
        real, padded = pix[name]
        return {"name": name, **extra, "pixels": real, "padded_pixels": padded,
                "pixels_ratio": real / base_real, "padded_ratio": padded / base_padded,
                **common.coco_metrics(eval_set, dets[name])}

    return {"sniper": point("sniper"),
            "single": [point(f"single{s}") for s in range(1, scales + 1)],
            "points": [point(f"setting{i}", **s, label=label(s)) for i, s in enumerate(settings)]}


def collapse_ties(points: list, marks: dict) -> list:
    """One row per distinct (pixels, AP): the first point, its mark noting how many others tie with it
    (settings that give the same chips, e.g. t2 values when a t1 leaves no scale-2 chips)."""
    rows, seen = [], {}
    for p in points:
        key = (p["pixels"], p["padded_pixels"], p["AP"])
        if key in seen:
            seen[key] += 1
            continue
        seen[key] = 0
        rows.append(p)
    for p in rows:
        n = seen[(p["pixels"], p["padded_pixels"], p["AP"])]
        if n:
            marks[p["name"]] = (marks.get(p["name"], "") + f" (+{n} same)").strip()
    return rows


def format_points(points: list, marks=None) -> str:
    marks = marks or {}
    headers = ["setting", "px/sniper", "pad/sniper", "AP", "AP50", "APs", "APm", "APl", ""]
    rows = [[p.get("label", p["name"]), f"{p['pixels_ratio']:.3f}", f"{p['padded_ratio']:.3f}",
             *(f"{p[k]:.1f}" for k in ("AP", "AP50", "APs", "APm", "APl")), marks.get(p["name"], "")]
            for p in points]
    return common.format_table(headers, rows)


def plot(result: dict, front: list, out, budget=None, best=None, default_name=None, cheapest=None,
         max_loss=None) -> None:
    """AP against pixels (fraction of sniper's): all settings, the front, sniper and single scales."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    pts = result["points"]
    ax.scatter([p["pixels_ratio"] for p in pts], [p["AP"] for p in pts], s=18, c="0.6", label="AutoFocus settings")
    ax.plot([p["pixels_ratio"] for p in front], [p["AP"] for p in front], "-o", c="tab:blue", ms=5,
            label="Pareto front")
    s = result["sniper"]
    ax.scatter([s["pixels_ratio"]], [s["AP"]], marker="*", s=160, c="tab:red", label="sniper (3-scale pyramid)",
               zorder=3)
    for p in result["single"]:
        ax.scatter([p["pixels_ratio"]], [p["AP"]], marker="s", s=40, c="tab:green", zorder=3)
        ax.annotate(p["name"], (p["pixels_ratio"], p["AP"]), textcoords="offset points", xytext=(5, -10), fontsize=8)
    if default_name is not None:
        d = next((p for p in pts if p["name"] == default_name), None)
        if d is not None:
            ax.scatter([d["pixels_ratio"]], [d["AP"]], marker="D", s=50, facecolors="none", edgecolors="k",
                       label="bundle's setting", zorder=4)
    if budget is not None:
        ax.axvline(budget, ls="--", c="0.3", lw=1, label=f"budget {budget:g}")
    if best is not None:
        ax.scatter([best["pixels_ratio"]], [best["AP"]], marker="o", s=120, facecolors="none",
                   edgecolors="tab:orange", linewidths=2, label="best within budget", zorder=4)
    if cheapest is not None:
        ax.scatter([cheapest["pixels_ratio"]], [cheapest["AP"]], marker="o", s=160, facecolors="none",
                   edgecolors="tab:purple", linewidths=2, label=f"cheapest within {max_loss:g} AP", zorder=4)
    ax.set_xlabel("pixels processed / pixels of the 3-scale pyramid")
    ax.set_ylabel("COCO AP (%)")
    ax.set_title("AutoFocus: accuracy against pixels (FocusChip parameters)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def _overrides(point: dict) -> str:
    """The engine overrides that reproduce a point, as they would be typed."""
    text = f"chip_params={json.dumps(point['chip_params'])}"
    return text + (f", coarse_scale={json.dumps(point['coarse_scale'])}" if point.get("coarse_scale") else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/sweep.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(p)
    p.add_argument("--grid", default=DEFAULT_GRID, help=f'parameter grid (default "{DEFAULT_GRID}")')
    p.add_argument("--budget", type=float, help="print the most accurate setting within this fraction of "
                                                "sniper's pixels (e.g. 0.3)")
    p.add_argument("--max-loss", type=float, help="print the cheapest setting within this many AP points of "
                                                  "sniper (e.g. 0.5)")
    p.add_argument("--png", default=None,
                   help="plot file (default: beside --json, with .png; without --json, sweep.png here; \"\": none). "
                        "The README's figure is docs/figures/sweep.png")
    p.add_argument("--all", action="store_true", help="print every setting, not only the Pareto front")
    p.add_argument("--breakdown", action="store_true",
                   help="also run each transition opened alone and all open: the AP each transition costs")
    common.add_output_arguments(p, "every point")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        engine = common.open_engine(args.bundle, args.backend, args.device)
        base = setting(engine.params.chip_params, engine.params.coarse_scale)
        settings = grid_settings(parse_grid(args.grid, len(base["chip_params"])), base["chip_params"],
                                 base["coarse_scale"])
        named = breakdown_settings(base) if args.breakdown else []
        settings += [s for _, s in named if s not in settings]
        check_settings(engine, settings)
        if args.budget is not None:
            best_within_budget([], args.budget)  # checks the budget before the long part
        if args.max_loss is not None:
            cheapest_within_loss([], 0.0, args.max_loss)
        eval_set = common.eval_set_from_args(args)
        result = sweep(engine, eval_set, settings, progress=not args.no_progress)
    except common.USER_ERRORS as e:
        return common.user_error(e)
    points = result["points"]
    front = pareto_front(points)
    best = best_within_budget(points, args.budget) if args.budget is not None else None
    cheapest = (cheapest_within_loss(points, result["sniper"]["AP"], args.max_loss)
                if args.max_loss is not None else None)
    default_name = next((p["name"] for p in points if same_setting(p, base)), None)
    marks = {p["name"]: "front" for p in front}
    if default_name:
        marks[default_name] = (marks.get(default_name, "") + " bundle").strip()
    if best is not None:
        marks[best["name"]] = (marks.get(best["name"], "") + " best").strip()
    if cheapest is not None:
        marks[cheapest["name"]] = (marks.get(cheapest["name"], "") + " cheapest").strip()
    print(f"{len(eval_set.infos)} images from {eval_set.coco.annotations_path}; backend {engine.backend_name} on "
          f"{engine.device}; {len(points)} settings")
    print(format_points([result["sniper"], *result["single"]]))
    print()
    print("All settings:" if args.all else "Pareto front (max AP for min pixels):")
    print(format_points(points if args.all else collapse_ties(front, marks), marks))
    if args.budget is not None:
        if best is None:
            fewest = min(p["pixels_ratio"] for p in points)
            print(f"\nno setting fits a budget of {args.budget:g} x sniper's pixels (the cheapest runs "
                  f"{fewest:.3f})")
        else:
            print(f"\nbest within {args.budget:g} x sniper's pixels: {best['label']} "
                  f"(pixels {best['pixels_ratio']:.3f}, AP {best['AP']:.1f}; {_overrides(best)})")
    if args.max_loss is not None:
        if cheapest is None:
            print(f"\nno setting is within {args.max_loss:g} AP of sniper ({result['sniper']['AP']:.1f})")
        else:
            print(f"\ncheapest within {args.max_loss:g} AP of sniper: {cheapest['label']} "
                  f"(pixels {cheapest['pixels_ratio']:.3f}, AP {cheapest['AP']:.1f}; "
                  f"{_overrides(cheapest)})")
    rows = None
    if named:
        rows = breakdown_rows(points, named, result["sniper"])
        print(f"\nBreakdown of the bundle's setting ({label(base)}): each transition opened alone (threshold 0)")
        print(format_breakdown(rows))
        all_open, sniper_ap = rows[-1], result["sniper"]["AP"]
        if base["coarse_scale"] is not None:  # scale 1 is not sniper's: the gap is the coarse scale's own
            verdict = ("AutoFocus's coarse scale is not sniper's scale 1, so they need not agree: the difference is "
                       "what the coarse scale itself gains or costs")
        elif all_open["AP"] == sniper_ap:
            verdict = "they agree, as they must (the cascade then runs sniper's inputs)"
        else:
            verdict = "they DIFFER: the cascade with every transition open should run sniper's inputs; please report it"
        print(f"all open: AP {all_open['AP']:.2f}, pixels {all_open['pixels_ratio']:.3f} x sniper's; sniper: AP "
              f"{sniper_ap:.2f}: {verdict}")
    if args.json:
        record = {"bundle": str(engine.bundle.folder), "annotations": str(eval_set.coco.annotations_path),
                  "images": len(eval_set.infos), "backend": engine.backend_name, "device": engine.device,
                  "grid": args.grid, "budget": args.budget, "machine": common.machine(),
                  "versions": common.versions(), **result, "front": [p["name"] for p in front],
                  "best_within_budget": best["name"] if best else None, "max_loss": args.max_loss,
                  "cheapest_within_loss": cheapest["name"] if cheapest else None, "bundle_setting": default_name,
                  "breakdown": rows}
        common.write_json(args.json, record)
    png = args.png if args.png is not None else (str(Path(args.json).with_suffix(".png")) if args.json else "sweep.png")
    if png:  # after the record: a plotting failure must not lose the measured points
        plot(result, front, png, args.budget, best, default_name, cheapest, args.max_loss)
        print(f"plot written to {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
