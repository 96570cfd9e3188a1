"""Speed, pixels and accuracy of AutoFocus against the full pyramid (SNIPER-style) and each single scale,
with one engine, one backend and the same images, in one process.

    python benchmarks/fps.py                              # bundles/default on the generated val split
    python benchmarks/fps.py --images DIR --annotations coco.json --limit 100 --repeats 5 --json fps.json
    python benchmarks/fps.py --backend torch --device cpu --batch 4 --modes autofocus,sniper

Every mode first runs once (untimed) on the first batch of images (warm-up: lazy initialisation,
allocator, TensorRT/ONNX Runtime first-call costs). Then each repeat times each mode in turn over all
images (modes interleaved, so a slow spell of the machine hits every mode alike). Images are decoded
before timing; a mode's time is host wall-clock over engine calls, including every stage the engine
runs (crop/resize, network, chips, post-processing) and the final copy of detections to the host.

Columns: images/s (median over repeats, with min-max), speed-up = sniper's median time / the mode's,
pixels per image = network-input pixels of all scales (real: the resized image or chip; padded: what
the network actually ran, up to the bucket or the next multiple of 32), the ratio of those to sniper's,
COCO AP/AP50/APs/APm/APl (pycocotools, on the first repeat's detections), post ms = milliseconds an
image in post-processing (decode, stacking, Soft-NMS; engine.last_stats) and post = its share of the
engine's time. On CUDA the stage figures come from one more, untimed pass per mode with the engine's
sync_stages on (each stage waits for its own GPU work); the timed passes run without it.

AP intervals (--bootstrap, 1000 resamples by default): the 95% interval of each mode's AP and of its gap
to sniper, from a paired bootstrap over the images (benchmarks/uncertainty.py): how far another draw of
as many images from the same scenes could move them. A gap whose interval holds 0 is not established.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

if __package__ in (None, ""):  # run as `python benchmarks/fps.py`: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, uncertainty
from runtime.params import PADDINGS

MODE_NAMES = ("autofocus", "sniper", "single")
# AutoFocus with its chips packed onto canvases or each chip its own input (runtime/params.py "packing"),
# whatever the engine's default: both in one run compare packing's AP and pixels on the same images.
PACKING_MODES = {"autofocus_packed": "canvas", "autofocus_unpacked": "none"}


def parse_modes(text: str | None, scales: int) -> list[tuple[str, str, dict]]:
    """"autofocus,sniper,single" -> [(name, engine mode, per-call overrides)]. "single" expands to one
    entry per scale (single1 = the coarsest); "single2" names one scale. None: all of them."""
    items = [m.strip() for m in (text or ",".join(MODE_NAMES)).split(",") if m.strip()]
    if not items:
        raise ValueError("modes: expected a comma-separated list of autofocus, sniper, single, singleN")
    out = []
    for item in items:
        if item in ("autofocus", "sniper"):
            out.append((item, item, {}))
        elif item in PACKING_MODES:
            out.append((item, "autofocus", {"packing": PACKING_MODES[item]}))
        elif item.startswith("autofocus_packed_gutter") and item[23:].isdigit():  # the gutter measured
            out.append((item, "autofocus", {"packing": "canvas", "canvas_gutter": int(item[23:])}))
        elif item == "single":
            out += [(f"single{s}", "single", {"scale": s}) for s in range(1, scales + 1)]
        elif item.startswith("single") and item[6:].isdigit() and 1 <= int(item[6:]) <= scales:
            out.append((item, "single", {"scale": int(item[6:])}))
        else:
            raise ValueError(f"modes: unknown mode {item!r}; expected autofocus, {', '.join(PACKING_MODES)}, sniper, "
                             f"single or single1..single{scales}")
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"modes: {text!r} names a mode twice")
    return out


def _batches(n: int, size: int):
    return [list(range(k, min(k + size, n))) for k in range(0, n, size)]


def run_mode(engine, images: list, mode: str, overrides: dict, batch: int, progress=None):
    """Runs one mode over all images. Returns (detections per image, per-call last_stats, seconds)."""
    detections, stats = [], []
    elapsed = 0.0
    for idx in _batches(len(images), batch):
        start = time.perf_counter()
        if batch == 1:
            dets = [engine(images[idx[0]], mode=mode, **overrides)]
        else:
            dets = engine.detect_batch([images[i] for i in idx], mode=mode, **overrides)
        elapsed += time.perf_counter() - start
        detections += dets
        stats.append(engine.last_stats)
        if progress is not None:
            progress.update(1)
    return detections, stats, elapsed


def benchmark(engine, eval_set: common.EvalSet, modes, repeats: int = 3, batch: int = 1,
              progress: bool = True, warmup_all: bool = False, bootstrap: int = 0, versus: str | None = None) -> dict:
    """Times each mode (see the module docstring); returns {name: figures} in the order of `modes`.
    bootstrap: resamples of the paired bootstrap of AP against sniper (add_intervals; 0: none); versus:
    one more mode to give every other mode's AP gap to, with its interval (add_gaps)."""
    if versus is not None and versus not in [name for name, _, _ in modes]:
        raise ValueError(f"versus: {versus!r} is not one of the modes {[name for name, _, _ in modes]}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
    if not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap: expected a number of resamples >= 0, got {bootstrap!r}")
    images = eval_set.images
    first = images if warmup_all else images[:batch]
    engine.count_host_syncs = True  # (the engine leaves torch's sync debug mode alone unless asked)
    for _, mode, overrides in modes:  # warm-up, untimed
        run_mode(engine, first, mode, overrides, batch)
    runs = {name: {"seconds": [], "stats": []} for name, _, _ in modes}
    calls = len(_batches(len(images), batch)) * len(modes) * repeats
    with tqdm(total=calls, desc="fps", unit="call", disable=not progress, file=sys.stderr) as bar:
        for r in range(repeats):
            for name, mode, overrides in modes:
                dets, stats, seconds = run_mode(engine, images, mode, overrides, batch, bar)
                runs[name]["seconds"].append(seconds)
                runs[name]["stats"] += stats
                if r == 0:
                    runs[name]["detections"] = {info["id"]: d for info, d in zip(eval_set.infos, dets)}
    if engine.device == "cuda":  # stage attribution: one synced pass per mode, not timed
        engine.sync_stages = True
        try:
            for name, mode, overrides in modes:
                runs[name]["stage_stats"] = run_mode(engine, images, mode, overrides, batch)[1]
        finally:
            engine.sync_stages = False
    results = {name: summarise(run, len(images), repeats) for name, run in runs.items()}
    # pycocotools matches each mode's detections once; the metrics and the bootstrap share the matches.
    evals = {name: common.coco_eval(eval_set, run["detections"]) for name, run in runs.items()}
    for name, ev in evals.items():
        results[name].update(common.metrics_of(ev))
    add_ratios(results)
    if bootstrap:
        add_intervals(results, evals, len(images), bootstrap)
        if versus is not None:
            add_gaps(results, evals, len(images), bootstrap, versus)
    return results


def add_gaps(results: dict, evals: dict, n_images: int, resamples: int, versus: str) -> None:
    """Each mode's AP - versus's with the 95% interval of the paired bootstrap (as add_intervals does
    against sniper): "AP_vs", "AP_vs_interval", "AP_vs_mode"."""
    intervals = uncertainty.bootstrap_evals(evals, n_images, versus, resamples=resamples)
    for name in evals:
        b = intervals[name]
        results[name].update({"AP_vs": b["ap_minus_reference"], "AP_vs_interval": [b["low"], b["high"]],
                              "AP_vs_mode": versus})


def format_gaps(results: dict) -> str:
    """AP - the --versus mode with its 95% bootstrap interval (add_gaps)."""
    versus = next(iter(results.values()))["AP_vs_mode"]
    rows = [[name, f"{r['AP']:.2f}", f"{r['AP_vs']:+.2f}", f"{r['AP_vs_interval'][0]:+.2f} to {r['AP_vs_interval'][1]:+.2f}"]
            for name, r in results.items()]
    return common.format_table(["mode", "AP", f"AP - {versus}", "95% interval"], rows)


def add_intervals(results: dict, evals: dict, n_images: int, resamples: int) -> None:
    """Each mode's AP and AP - sniper with their 95% intervals from a paired bootstrap over the images
    (benchmarks/uncertainty.py) on each mode's pycocotools matches (common.coco_eval): how far another
    draw of as many images could move them. Without sniper, no gap: each mode's own AP interval only."""
    reference = "sniper" if "sniper" in evals else next(iter(evals))
    intervals = uncertainty.bootstrap_evals(evals, n_images, reference, resamples=resamples)
    for name in evals:
        r, b = results[name], intervals[name]
        r["AP_interval"] = [b["ap_low"], b["ap_high"]]
        r["AP_vs_sniper"] = b["ap_minus_reference"] if reference == "sniper" else None
        r["AP_vs_sniper_interval"] = [b["low"], b["high"]] if reference == "sniper" else None
        r["AP_interval_resamples"] = resamples


def summarise(run: dict, n_images: int, repeats: int) -> dict:
    """Timing and pixel figures of one mode from its seconds per repeat and the engine's stats."""
    seconds = run["seconds"]
    per_repeat = run["stats"][:len(run["stats"]) // repeats]  # pixels and chips are the same every repeat
    real = sum(common.pixels(s)[0] for s in per_repeat)
    padded = sum(common.pixels(s)[1] for s in per_repeat)
    scales = len(per_repeat[0]["scales"])
    chips = [sum(s["scales"][k]["chips"] for s in per_repeat) / n_images for k in range(scales)]
    by_scale = [sum(s["scales"][k]["pixels"] for s in per_repeat) / n_images for k in range(scales)]
    stage_stats = run.get("stage_stats", run["stats"])
    stage = {k: sum(s["seconds"][k] for s in stage_stats) for k in ("network", "chips", "postprocess", "total")}
    passes = len(stage_stats) / len(per_repeat)
    median = statistics.median(seconds)
    return {"images_per_s": n_images / median, "images_per_s_min": n_images / max(seconds),
            "images_per_s_max": n_images / min(seconds), "seconds_per_repeat": seconds,
            "seconds_median": median, "pixels_per_image": real / n_images,
            "padded_pixels_per_image": padded / n_images, "pixels_per_image_by_scale": by_scale,
            "chips_per_image": chips,
            "stage_share": {k: (v / stage["total"] if stage["total"] else 0.0)
                            for k, v in stage.items() if k != "total"},
            "postprocess_share": stage["postprocess"] / stage["total"] if stage["total"] else 0.0,
            "postprocess_ms_per_image": 1000 * stage["postprocess"] / (passes * n_images),
            "stage_ms_per_image": {k: 1000 * v / (passes * n_images) for k, v in stage.items()},
            # each network call is a batch of one input shape (last_stats "batches": calls per shape)
            # distinct network-input shapes each scale ran (a CUDA graph or TensorRT profile each)
            "shapes_by_scale": [sorted({k for s in per_repeat for k in s["scales"][j].get("shapes", {})})
                                for j in range(scales)],
            "network_calls_per_image": sum(sum(s["batches"].values()) for s in per_repeat) / n_images,
            "host_syncs_per_image": (sum(s["host_syncs"] for s in per_repeat) / n_images
                                     if per_repeat[0].get("host_syncs") is not None else None),
            "synced_stages": bool(stage_stats and stage_stats[0].get("synced_stages"))}


def add_ratios(results: dict) -> None:
    """speed-up and pixel ratios against sniper (None when sniper was not run)."""
    base = results.get("sniper")
    for r in results.values():
        r["speedup_vs_sniper"] = base["seconds_median"] / r["seconds_median"] if base else None
        r["pixels_vs_sniper"] = r["pixels_per_image"] / base["pixels_per_image"] if base else None
        if "pixels_per_image_by_scale" in r:  # (not SAHI's, peers.py) each scale's share of sniper's total
            r["pixels_vs_sniper_by_scale"] = ([p / base["pixels_per_image"] for p in r["pixels_per_image_by_scale"]]
                                              if base else None)
        r["padded_pixels_vs_sniper"] = (r["padded_pixels_per_image"] / base["padded_pixels_per_image"]
                                        if base else None)


def _opt(value, fmt):
    return "n/a" if value is None else format(value, fmt)


def format_results(results: dict) -> str:
    headers = ["mode", "images/s", "(min-max)", "x sniper", "Mpx/img", "padded", "px/sniper", "pad/sniper",
               "AP", "AP50", "APs", "APm", "APl", "post ms", "post"]
    rows = []
    for name, r in results.items():
        rows.append([name, f"{r['images_per_s']:.2f}", f"{r['images_per_s_min']:.2f}-{r['images_per_s_max']:.2f}",
                     _opt(r["speedup_vs_sniper"], ".2f"), f"{r['pixels_per_image'] / 1e6:.3f}",
                     f"{r['padded_pixels_per_image'] / 1e6:.3f}", _opt(r["pixels_vs_sniper"], ".3f"),
                     _opt(r["padded_pixels_vs_sniper"], ".3f"),
                     *(f"{r[k]:.1f}" for k in ("AP", "AP50", "APs", "APm", "APl")),
                     f"{r['postprocess_ms_per_image']:.2f}", f"{100 * r['postprocess_share']:.0f}%"])
    return common.format_table(headers, rows)


def format_intervals(results: dict) -> str:
    """AP and AP - sniper with their 95% bootstrap intervals (add_intervals)."""
    rows = [[name, f"{r['AP']:.1f}", f"{r['AP_interval'][0]:.1f} to {r['AP_interval'][1]:.1f}",
             _opt(r["AP_vs_sniper"], "+.2f"),
             "n/a" if r["AP_vs_sniper_interval"] is None else
             f"{r['AP_vs_sniper_interval'][0]:+.2f} to {r['AP_vs_sniper_interval'][1]:+.2f}"]
            for name, r in results.items()]
    return common.format_table(["mode", "AP", "AP 95% interval", "AP - sniper", "95% interval"], rows)


def format_scales(results: dict) -> str:
    """Chips an image and pixels as a fraction of sniper's total pixels, per scale (n/a without sniper)."""
    scales = len(next(iter(results.values()))["chips_per_image"])
    rows = [[name, *(f"{c:.2f}" for c in r["chips_per_image"]),
             *(_opt(v, ".3f") for v in (r["pixels_vs_sniper_by_scale"] or [None] * scales))]
            for name, r in results.items()]
    return common.format_table(["mode", *(f"chips s{k + 1}" for k in range(scales)),
                                *(f"px/sniper s{k + 1}" for k in range(scales))], rows)


def format_stages(results: dict) -> str:
    """Milliseconds an image per stage (synced on CUDA, see the module docstring), network calls and host
    syncs an image (on a GPU each call and each sync costs more than its pixels)."""
    rows = [[name, *(f"{r['stage_ms_per_image'][k]:.2f}" for k in ("network", "chips", "postprocess", "total")),
             f"{r['network_calls_per_image']:.2f}", _opt(r["host_syncs_per_image"], ".1f"),
             "/".join(str(len(s)) for s in r["shapes_by_scale"])]
            for name, r in results.items()]
    return common.format_table(["mode", "network ms", "chips ms", "post ms", "total ms", "calls/img", "syncs/img",
                                "shapes by scale"], rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/fps.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(p)
    p.add_argument("--batch", type=int, default=1, help="images per engine call (detect_batch when > 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the images per mode")
    p.add_argument("--modes", help="comma-separated: autofocus, sniper, single (every scale) or singleN "
                                   "(default: all); autofocus_packed, autofocus_unpacked, autofocus_packed_gutterN "
                                   "(packing on with an N-px gutter) whatever the engine's packing")
    p.add_argument("--padding", choices=PADDINGS,
                   help="network-input padding (runtime/params.py; default: the engine's for its device)")
    p.add_argument("--chips-on-host", choices=("yes", "no"),
                   help="on CUDA, FocusChips on a host copy of the focus maps (default: the engine's)")
    p.add_argument("--keep-uncovered", choices=("yes", "no"),
                   help="stacking keeps a box below its scale's range where no finer chip holds it whole (default: "
                        "the engine's, yes; no: the paper's rule)")
    p.add_argument("--padded-decode", choices=("yes", "no"),
                   help="decode without a host read of each batch's count (default: the engine's; yes on CUDA)")
    p.add_argument("--max-batch", type=int,
                   help="network inputs per call (default: the engine's; 16 on CUDA with the torch backend)")
    p.add_argument("--packing", choices=("none", "canvas"),
                   help="chips packed onto canvases (runtime/params.py; default: the engine's, canvas on CUDA)")
    p.add_argument("--canvas-gutter", type=int,
                   help="packing: input pixels of zeros between chips on a canvas (default: the bundle's)")
    p.add_argument("--versus", help="also give every mode's AP gap to this mode with its bootstrap interval "
                                    "(e.g. autofocus_unpacked with --modes autofocus_packed,autofocus_unpacked)")
    p.add_argument("--cuda-graphs", choices=("yes", "no"),
                   help="torch backend on CUDA: replay the network from CUDA graphs (default: yes there)")
    p.add_argument("--warmup-all", action="store_true",
                   help="warm up on every image, not only the first batch (every input shape seen before timing: "
                        "CUDA graph captures, cuDNN algorithm choices)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="resamples of the paired bootstrap over images for the AP intervals (0: none)")
    common.add_output_arguments(p, "the figures, machine and versions")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = {"padding": args.padding} if args.padding else {}
        if args.chips_on_host:
            overrides["chips_on_host"] = args.chips_on_host == "yes"
        if args.padded_decode:
            overrides["padded_decode"] = args.padded_decode == "yes"
        if args.keep_uncovered:
            overrides["keep_uncovered"] = args.keep_uncovered == "yes"
        if args.max_batch is not None:
            overrides["max_batch"] = args.max_batch
        if args.packing:
            overrides["packing"] = args.packing
        if args.canvas_gutter is not None:
            overrides["canvas_gutter"] = args.canvas_gutter
        if args.cuda_graphs:
            overrides["cuda_graphs"] = args.cuda_graphs == "yes"
        engine = common.open_engine(args.bundle, args.backend, args.device, **overrides)
        modes = parse_modes(args.modes, len(engine.params.scales))
        eval_set = common.eval_set_from_args(args)
        results = benchmark(engine, eval_set, modes, args.repeats, args.batch, progress=not args.no_progress,
                            warmup_all=args.warmup_all, bootstrap=args.bootstrap, versus=args.versus)
    except common.USER_ERRORS as e:
        return common.user_error(e)
    print(f"{len(eval_set.infos)} images from {eval_set.coco.annotations_path}; backend {engine.backend_name} on "
          f"{engine.device}; batch {args.batch}; {args.repeats} repeat(s); {common.machine()['cpu']}")
    print(format_results(results))
    if args.bootstrap:
        print(f"paired bootstrap over the {len(eval_set.infos)} images, {args.bootstrap} resamples:")
        print(format_intervals(results))
        if args.versus:
            print(format_gaps(results))
    print(format_scales(results))
    print(format_stages(results))
    if args.json:
        record = {"bundle": str(engine.bundle.folder), "annotations": str(eval_set.coco.annotations_path),
                  "images": len(eval_set.infos), "backend": engine.backend_name, "device": engine.device,
                  "padding": engine.params.padding, "chips_on_host": engine.params.chips_on_host,
                  "padded_decode": engine.params.padded_decode, "keep_uncovered": engine.params.keep_uncovered,
                  "max_batch": engine.params.max_batch,
                  "packing": engine.params.packing, "canvas_gutter": engine.params.canvas_gutter,
                  "cuda_graphs": engine.cuda_graphs, "warmup_all": args.warmup_all,
                  "batch": args.batch, "repeats": args.repeats,
                  "machine": common.machine(), "versions": common.versions(),
                  "bundle_build": engine.bundle.to_dict().get("build"), "modes": results}
        common.write_json(args.json, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
