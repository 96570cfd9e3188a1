"""Collection throughput: python -m runtime's single process against Ray Data actors, one run each.

    python benchmarks/collection.py                     # bundles/default, 40 generated val images, 2 actors
    python benchmarks/collection.py --count 200 --workers 4 --backend onnxruntime

Needs the [ray] extra for the Ray rows (without it, only the single process is measured). Each row is one
whole runtime.collection.run over the same image files (JPEG, as model.synth writes the val split) into a
fresh output: decoding, the engine, shards and the merge, from the first image to the merged file. The
single process includes its engine's load; each Ray row its actors' start-up and engine loads, but not
ray.init (printed apart: a cluster is started once for many runs). Where the cluster has GPUs, the Ray
row runs one actor per GPU instead of --workers. Ray overhead per image: (Ray with 1 actor - single
process) / images, the cost Ray adds to the same work in one engine; ratios are printed against the
single process. All three runs must produce the same results file (checked: the Ray path is the single
process's code in the actors).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from runtime.collection import RunOptions, run

REPO = Path(__file__).resolve().parent.parent


def timed_run(annotations: Path, out: Path, options: RunOptions) -> float:
    start = time.perf_counter()
    status = run([annotations], {"out": out}, options, progress=False)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{out}: {status=} (see {out.with_name(out.stem + '.failures.json')})")
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(REPO / "bundles" / "default"))
    p.add_argument("--backend", default="auto")
    p.add_argument("--mode", default="autofocus")
    p.add_argument("--count", type=int, default=40, help="generated val images (default 40)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors on a CPU-only cluster (default 2)")
    p.add_argument("--shard-size", type=int, default=8)
    args = p.parse_args(argv)
    if not (Path(args.bundle) / "bundle.json").is_file():
        print(f"error: no bundle in {args.bundle}: build one with `python export/build_engine.py`", file=sys.stderr)
        return 2
    from model.synth import DEFAULT_SPLITS, generate_split
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        annotations = generate_split(tmp / "val", DEFAULT_SPLITS["val"][0], args.count, split="val")
        base = dict(bundle=args.bundle, backend=args.backend, mode=args.mode, shard_size=args.shard_size)
        rows = [("single process", timed_run(annotations, tmp / "single.json", RunOptions(**base)))]
        try:
            from runtime import distributed
            ray = distributed.import_ray()
        except ValueError as e:
            print(f"(no Ray rows: {e})")
            ray = None
        if ray is not None:
            start = time.perf_counter()
            ray.init(include_dashboard=False, logging_level="warning")
            print(f"ray.init: {time.perf_counter() - start:.1f} s (not in the rows)")
            gpus = int(ray.cluster_resources().get("GPU", 0))
            workers = None if gpus else args.workers
            label = f"Ray, {gpus} actor(s), one per GPU" if gpus else f"Ray, {args.workers} actors"
            rows.append((label, timed_run(annotations, tmp / "ray.json",
                                          RunOptions(**base, ray="auto", workers=workers))))
            rows.append(("Ray, 1 actor", timed_run(annotations, tmp / "ray1.json",
                                                   RunOptions(**base, ray="auto", workers=1))))
            ray.shutdown()
            same = all((tmp / f).read_bytes() == (tmp / "single.json").read_bytes() for f in ("ray.json", "ray1.json"))
            print(f"results identical to the single process: {same}")
        single = rows[0][1]
        print(f"\n{args.count} val images, mode {args.mode}, backend {args.backend}, shards of {args.shard_size}")
        print(f"{'':<34}{'seconds':>9}{'images/s':>10}{'vs single':>11}")
        for label, seconds in rows:
            print(f"{label:<34}{seconds:>9.1f}{args.count / seconds:>10.2f}{single / seconds:>10.2f}x")
        if len(rows) == 3:
            overhead = (rows[2][1] - single) / args.count
            print(f"Ray overhead per image (1 actor - single process): {overhead * 1000:.0f} ms "
                  f"({overhead / (single / args.count):.2f}x the single process's time an image)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
