"""A small COCO dataset of drawn shapes, for trying "bring your own data" without any download.

    python -m model.shapes --out data/shapes/train --count 300 --seed 1
    python -m model.shapes --out data/shapes/val --count 60 --seed 2

Three classes that the shipped model does not know (disc, square, triangle) under category ids 12, 30
and 7 (not 1..N, listed out of order, as real COCO files may be), images of mixed sizes (some wider,
some taller, a few tiny and a few larger than the finest scale), objects from about 6 to 250 pixels,
and every tenth image with no object at all. The output is a plain COCO detection file plus an image folder:
what `model.train`, `model.focus_refit` and `model.evaluate` read with --train-annotations/... .
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np

# (category id, name), in the order the file lists them.
CATEGORIES = ((12, "disc"), (30, "square"), (7, "triangle"))
SIZES = ((480, 640), (640, 480), (360, 960), (720, 1280), (200, 300), (1100, 2200))


def _draw(image: np.ndarray, kind: str, cx: float, cy: float, side: float, colour) -> list[float]:
    """Draws one shape; returns its box [x, y, w, h] clipped to the image."""
    h, w = image.shape[:2]
    r = side / 2
    if kind == "disc":
        cv2.circle(image, (int(round(cx)), int(round(cy))), int(round(r)), colour, -1, cv2.LINE_AA)
        x0, y0, x1, y1 = cx - round(r), cy - round(r), cx + round(r), cy + round(r)
    elif kind == "square":
        x0, y0, x1, y1 = cx - r, cy - r, cx + r, cy + r
        cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), colour, -1)
        x1, y1 = int(x1) + 1, int(y1) + 1
        x0, y0 = int(x0), int(y0)
    else:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(image, [pts], colour, cv2.LINE_AA)
        x0, y0 = pts[:, 0].min(), pts[:, 1].min()
        x1, y1 = pts[:, 0].max() + 1, pts[:, 1].max() + 1
    x0, y0 = max(0.0, float(x0)), max(0.0, float(y0))
    x1, y1 = min(float(w), float(x1)), min(float(h), float(y1))
    return [x0, y0, x1 - x0, y1 - y0]


def make_image(rng: np.random.Generator, size: tuple[int, int], max_objects: int = 12, empty: bool = False):
    """(BGR image, [(category id, [x, y, w, h])]): a noisy gradient background with shapes on it
    (none when `empty`)."""
    h, w = size
    base = rng.integers(40, 200, 3)
    ramp = np.linspace(-30, 30, w)[None, :, None]
    image = np.clip(base[None, None, :] + ramp + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    objects = []
    n = 0 if empty else int(rng.integers(1, max_objects + 1))
    for _ in range(n):
        cat, name = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        side = float(np.exp(rng.uniform(np.log(6), np.log(min(250, 0.6 * min(h, w))))))
        cx, cy = rng.uniform(side / 2, w - side / 2), rng.uniform(side / 2, h - side / 2)
        colour = tuple(int(v) for v in (rng.integers(0, 256, 3) + 128) % 256)
        box = _draw(image, name, cx, cy, side, colour)
        if box[2] >= 1 and box[3] >= 1:
            objects.append((cat, [round(v, 2) for v in box]))
    return image, objects


def generate(out_dir, count: int, seed: int = 0, sizes=SIZES) -> Path:
    """Writes out_dir/images/*.png and out_dir/annotations.json (last, atomically); returns its path."""
    if count < 1:
        raise ValueError(f"count: expected >= 1, got {count}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": cid, "name": name} for cid, name in CATEGORIES]}
    for i in range(count):
        size = sizes[int(rng.integers(len(sizes)))]
        image, objects = make_image(rng, size, empty=i % 10 == 9)  # every tenth image is empty
        name = f"{i:06d}.png"
        cv2.imwrite(str(out / "images" / name), image)
        image_id = 1000 + i
        coco["images"].append({"id": image_id, "file_name": name, "width": size[1], "height": size[0]})
        for cat, box in objects:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": cat, "bbox": box, "area": box[2] * box[3],
                                        "iscrowd": 0})
    path = out / "annotations.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco))
    os.replace(tmp, path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write images/ and annotations.json into")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(generate(args.out, args.count, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
