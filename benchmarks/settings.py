"""AutoFocus under each batching setting (padding x chips_on_host, runtime/params.py) against sniper, on
one engine and the same images, in one run: which setting a device wants.

    python benchmarks/settings.py --backend torch --device cuda --limit 150 [--batch 4] [--json FILE]

On a GPU a network call or a small kernel costs more than the pixels it runs, so fewer, fuller batches
(padding "shared") and FocusChips on the host (the chips are read there anyway) can pay for their extra
padded pixels; on the CPU pixels dominate and "divisor" padding wins. Prints the fps table (fps.py) and
each setting's milliseconds per image by stage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/settings.py`: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, fps

PADDINGS = ("bucket", "shared")


def settings_modes(paddings=PADDINGS) -> list[tuple[str, str, dict]]:
    """fps.benchmark modes: sniper and AutoFocus under every padding, each with and without chips on host."""
    # The first sniper is named plain "sniper": fps.format_results gives every row its ratio against it.
    modes = [("sniper" if i == 0 else f"sniper_{pad}", "sniper", {"padding": pad}) for i, pad in enumerate(paddings)]
    for pad in paddings:
        for host in (False, True):
            modes.append((f"autofocus_{pad}{'_host' if host else ''}", "autofocus",
                          {"padding": pad, "chips_on_host": host}))
    return modes


def stage_milliseconds(results: dict) -> dict:
    """{name: {stage: ms per image}}: fps.benchmark's timed ms per image, and its stage ms (on CUDA from
    its synced attribution pass)."""
    return {name: {"total": round(1000.0 / r["images_per_s"], 2),
                   **{k: round(v, 2) for k, v in r["stage_ms_per_image"].items() if k != "total"}}
            for name, r in results.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/settings.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(p)
    p.add_argument("--batch", type=int, default=1, help="images per engine call")
    p.add_argument("--repeats", type=int, default=2, help="timed passes over the images per setting")
    common.add_output_arguments(p, progress=False)
    args = p.parse_args(argv)
    try:
        engine = common.open_engine(args.bundle, args.backend, args.device)
        eval_set = common.eval_set_from_args(args)
        results = fps.benchmark(engine, eval_set, settings_modes(), args.repeats, args.batch, progress=False)
    except common.USER_ERRORS as e:
        return common.user_error(e)
    print(f"{len(eval_set.infos)} images; backend {engine.backend_name} on {engine.device}; batch {args.batch}; "
          f"{args.repeats} repeat(s); {common.machine()['cpu']}")
    print(fps.format_results(results))
    stages = stage_milliseconds(results)
    print(common.format_table(["setting", "ms/image", "network", "chips", "postprocess"],
                              [[n, f"{s['total']:.2f}", *(f"{s.get(k, 0):.2f}" for k in ("network", "chips", "postprocess"))]
                               for n, s in stages.items()]))
    common.write_json(args.json, {"images": len(eval_set.infos), "backend": engine.backend_name,
                                  "device": engine.device, "batch": args.batch, "machine": common.machine(),
                                  "versions": common.versions(), "settings": results, "ms_per_image": stages})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
