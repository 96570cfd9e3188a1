"""Where an engine call spends its time: the host's Python functions (cProfile) and, on CUDA, the
device's kernels and the host's launches (torch.profiler), over a few batches of one mode.

    python benchmarks/hotspots.py --backend torch --device cuda --mode autofocus --batch 8 --limit 64

Prints the top functions by own time and by cumulative time (the stages), then (on CUDA) the top
operators by self CPU time and by self CUDA time. A warm-up pass over the same images runs first,
untimed (CUDA graph captures, allocator).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/hotspots.py`: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.fps import run_mode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/hotspots.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(p)
    p.add_argument("--mode", default="autofocus", choices=("autofocus", "sniper", "single"))
    p.add_argument("--batch", type=int, default=8, help="images per engine call")
    p.add_argument("--top", type=int, default=25, help="rows per table")
    args = p.parse_args(argv)
    try:
        engine = common.open_engine(args.bundle, args.backend, args.device)
        images = common.eval_set_from_args(args).images
    except common.USER_ERRORS as e:
        return common.user_error(e)
    run_mode(engine, images, args.mode, {}, args.batch)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    _, _, seconds = run_mode(engine, images, args.mode, {}, args.batch)
    profiler.disable()
    print(f"{len(images)} images, {args.mode}, batch {args.batch}, {engine.backend_name} on {engine.device}: "
          f"{1000 * seconds / len(images):.2f} ms an image (under cProfile)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)  # time per stage
    print(out.getvalue())
    if engine.device == "cuda":
        import torch
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run_mode(engine, images, args.mode, {}, args.batch)
            torch.cuda.synchronize()
        averages = prof.key_averages()
        print(averages.table(sort_by="self_cpu_time_total", row_limit=args.top))
        print(averages.table(sort_by="self_cuda_time_total", row_limit=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
