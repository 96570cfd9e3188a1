"""python -m runtime INPUT... : detections of a collection of images as COCO results JSON, optionally drawn.

    python -m runtime photos/ more/*.jpg list.txt val/annotations.json --out dets.json --viz viz/
    python -m runtime photos/ --out dets.json --ray auto --workers 2       # Ray Data (pip install '.[ray]')

INPUT: image files, folders (recursive), globs, text files of paths (.txt/.lst) or COCO files (.json, their
images). Results go to --out in shards as they are made (<out>.parts/), merged at the end; a re-run with
the same --out does only what is left. Unreadable images are listed in <out stem>.failures.json.
image_id: the COCO file's id, or --annotations' id for the base name, else the path as found.
category_id: the bundle's class index + 1, or the id of the category of the same name in the COCO
input or --annotations. --viz DIR writes DIR/<stem>-<digest of the id>.png: each scale's chips
(scale 1 blue, 2 green, 3 red, further scales yellow) and the detections (white, with class and score).
Exit status: 0 all done, 1 some images failed, 2 nothing ran (bad arguments or outputs). Details:
runtime/collection.py (runtime/inputs.py, runtime/shards.py, runtime/drawings.py) and runtime/distributed.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli_options
from .collection import RunOptions, run
from .engine import MODES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="image files, folders, globs, .txt lists of paths, COCO .json files")
    p.add_argument("--bundle", default=None, help="bundle folder (export/build_engine.py; default: bundles/default "
                                                 "of this checkout, else of the current folder)")
    p.add_argument("--mode", choices=MODES, default="autofocus")
    p.add_argument("--scale", type=int, default=None, help="--mode single (required there): which scale (1-based)")
    p.add_argument("--backend", default="auto", help="auto | tensorrt | onnxruntime | torch")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--out", type=Path, default=None, help="COCO results JSON (default: stdout, no shards)")
    p.add_argument("--viz", type=Path, default=None, help="folder for one PNG per image")
    p.add_argument("--annotations", type=Path, default=None,
                   help="COCO file giving image ids (by file base name) and category ids")
    p.add_argument("--image-root", type=Path, default=None,
                   help="folder that COCO inputs' file_name are relative to (default: the COCO file's folder, "
                        "else its images/ folder)")
    p.add_argument("--work", type=Path, default=None, help="shards folder (default: <out>.parts)")
    p.add_argument("--shard-size", type=cli_options.positive_int, default=64, help="images a shard (default 64)")
    p.add_argument("--batch-size", type=cli_options.positive_int, default=8, help="images an engine call on CUDA (default 8)")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                   help="run on Ray Data: 'auto' (RAY_ADDRESS, a local `ray start`, else a new local instance) "
                        "or the cluster's HOST:PORT / ray://HOST:PORT")
    p.add_argument("--workers", type=cli_options.positive_int, default=None,
                   help="--ray: engine actors (default: one per GPU, else CPUs // 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli_options.add_arguments(p)
    args = p.parse_args(argv)
    if args.workers is not None and args.ray is None:
        p.error("--workers applies to --ray")
    overrides = cli_options.engine_overrides(p, args)
    try:
        options = RunOptions(bundle=cli_options.bundle_folder(args.bundle), mode=args.mode, backend=args.backend,
                             device=args.device, overrides=overrides, score_threshold=args.score_threshold,
                             shard_size=args.shard_size, batch_size=args.batch_size, ray=args.ray,
                             workers=args.workers)
        return run(args.inputs, {"out": args.out, "viz": args.viz, "work": args.work}, options,
                   annotations=args.annotations, image_root=args.image_root, progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
