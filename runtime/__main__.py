"""python -m runtime IMAGE... : detections as COCO results JSON, optionally drawn.

    python -m runtime a.jpg b.png --bundle bundles/default --mode autofocus --out results.json --viz viz/

image_id: the image's file name, or its id in --annotations (a COCO file whose images' file_name match
by base name). category_id: the bundle's class index + 1 (1-based in bundle class order, as model.synth
numbers its categories), or the id of the category of the same name in --annotations.
--viz DIR writes DIR/<image stem>.png: each scale's chips (scale 1 blue, 2 green, 3 red, further
scales yellow) and the detections (white, with class and score).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cli_options
from .engine import MODES, AutoFocusEngine

CHIP_COLOURS = [(255, 128, 0), (0, 200, 0), (0, 0, 255), (0, 220, 220)]  # BGR per scale


def draw(image, detections, classes):
    """A copy of image (BGR) with each scale's chips and the detections drawn."""
    import cv2
    out = image.copy()
    for s, chips in enumerate(detections.chips):
        colour = CHIP_COLOURS[min(s, len(CHIP_COLOURS) - 1)]
        for x1, y1, x2, y2 in chips.round().astype(int).tolist():
            cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, 2)
    for (x1, y1, x2, y2), score, label in zip(detections.boxes.round().astype(int).tolist(),
                                              detections.scores.tolist(), detections.labels.tolist()):
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), (255, 255, 255), 1)
        cv2.putText(out, f"{classes[label]} {score:.2f}", (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _annotation_ids(path, classes):
    """(file base name -> image id, class index -> category id) from a COCO file."""
    coco = json.loads(Path(path).read_text())
    images = {Path(im["file_name"]).name: im["id"] for im in coco.get("images", [])}
    by_name = {c["name"]: c["id"] for c in coco.get("categories", [])}
    missing = [c for c in classes if c not in by_name]
    if missing:
        raise ValueError(f"--annotations: {path} has no categories named {missing}")
    return images, [by_name[c] for c in classes]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--bundle", default=None, help="bundle folder (export/build_engine.py; default: bundles/default "
                                                 "of this checkout, else of the current folder)")
    p.add_argument("--mode", choices=MODES, default="autofocus")
    p.add_argument("--scale", type=int, default=None, help="--mode single (required there): which scale (1-based)")
    p.add_argument("--backend", default="auto", help="auto | tensorrt | onnxruntime | torch")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--out", type=Path, default=None, help="COCO results JSON (default: stdout)")
    p.add_argument("--viz", type=Path, default=None, help="folder for one PNG per image")
    p.add_argument("--annotations", type=Path, default=None, help="COCO file giving image and category ids")
    cli_options.add_arguments(p)
    args = p.parse_args(argv)
    overrides = cli_options.engine_overrides(p, args)
    try:
        bundle = cli_options.bundle_folder(args.bundle)
        engine = AutoFocusEngine(bundle, backend=args.backend, device=args.device, **overrides)
        image_ids, category_ids = ({}, None) if args.annotations is None \
            else _annotation_ids(args.annotations, engine.classes)
        print(f"{engine.backend_name} on {engine.device}, mode {args.mode}", file=sys.stderr)
        results = []
        for path in args.images:
            det = cli_options.above_threshold(engine(path, mode=args.mode), args.score_threshold)
            entries = det.to_coco(image_ids.get(path.name, path.name))
            if category_ids is not None:
                for e in entries:
                    e["category_id"] = category_ids[e["category_id"] - 1]
            results += entries
            stats = engine.last_stats
            print(f"{path}: {len(det)} detections, {stats['seconds']['total'] * 1000:.0f} ms, chips per scale "
                  f"{[s['chips'] for s in stats['scales']]}", file=sys.stderr)
            if args.viz is not None:
                import cv2
                from .images import load_image
                args.viz.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(args.viz / f"{path.stem}.png"), draw(load_image(path), det, engine.classes))
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(results)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
