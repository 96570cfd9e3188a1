"""COCO JSON detection datasets: one loader for training, evaluation and benchmarks.

Boxes come out in the project's convention (float32 [x1, y1, x2, y2] pixels, continuous coordinates) and
labels as 0-based indices into `classes`, which lists category names in category-id order. Crowd
annotations (iscrowd = 1) are not boxes of single objects and are left out of `boxes`/`labels`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.images import load_image


@dataclass
class CocoSet:
    root: Path                    # folder of the images
    classes: list[str]            # names, in category-id order; label = index into this list (0-based)
    images: list[dict]            # each: {"id", "file_name", "width", "height", "path": Path}
    boxes: dict[int, np.ndarray]  # image id -> (K,4) float32 [x1,y1,x2,y2] in pixels
    labels: dict[int, np.ndarray] # image id -> (K,) int64 0-based class index
    annotations_path: Path

    def __len__(self) -> int:
        return len(self.images)


def _fail(path: Path, what: str):
    raise ValueError(f"{path}: not a COCO detection file: {what}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_coco(annotations_path, images_dir=None) -> CocoSet:
    """Read a COCO detection JSON file.

    images_dir defaults to <folder of the annotations>/images. Raises FileNotFoundError naming the file
    when it is missing and ValueError naming it when it is not COCO detection JSON (unreadable JSON,
    missing keys, annotations pointing to unknown images or categories, negative sizes)."""
    path = Path(annotations_path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotations file not found: {path}")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(data, dict):
        _fail(path, "the top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            _fail(path, f"missing list '{key}'")

    categories = {}
    for c in data["categories"]:
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            _fail(path, f"category without an integer 'id' and a string 'name': {c!r}")
        if c["id"] in categories:
            _fail(path, f"duplicate category id {c['id']}")
        categories[c["id"]] = c["name"]
    cat_ids = sorted(categories)
    label_of = {cid: i for i, cid in enumerate(cat_ids)}

    root = Path(images_dir) if images_dir is not None else path.parent / "images"
    images, by_id = [], {}
    for im in data["images"]:
        if not isinstance(im, dict):
            _fail(path, f"image entry is not an object: {im!r}")
        for key in ("id", "width", "height"):
            if not _is_int(im.get(key)):
                _fail(path, f"image without an integer '{key}': {im!r}")
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            _fail(path, f"image without a 'file_name': {im!r}")
        if im["width"] <= 0 or im["height"] <= 0:
            _fail(path, f"image {im['id']} has a non-positive size {im['width']} x {im['height']}")
        if im["id"] in by_id:
            _fail(path, f"duplicate image id {im['id']}")
        rec = {"id": im["id"], "file_name": im["file_name"], "width": im["width"], "height": im["height"],
               "path": root / im["file_name"]}
        images.append(rec)
        by_id[im["id"]] = rec

    boxes_of = {i: [] for i in by_id}
    labels_of = {i: [] for i in by_id}
    for a in data["annotations"]:
        if not isinstance(a, dict):
            _fail(path, f"annotation entry is not an object: {a!r}")
        if a.get("image_id") not in by_id:
            _fail(path, f"annotation {a.get('id')!r} points to unknown image {a.get('image_id')!r}")
        if a.get("category_id") not in categories:
            _fail(path, f"annotation {a.get('id')!r} points to unknown category {a.get('category_id')!r}")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            _fail(path, f"annotation {a.get('id')!r} has no bbox [x, y, w, h] of 4 finite numbers")
        x, y, w, h = bbox
        if w < 0 or h < 0:
            _fail(path, f"annotation {a.get('id')!r} has a negative box size {w} x {h}")
        if a.get("iscrowd", 0):
            continue
        boxes_of[a["image_id"]].append((x, y, x + w, y + h))
        labels_of[a["image_id"]].append(label_of[a["category_id"]])

    boxes = {i: np.asarray(b, np.float32).reshape(-1, 4) for i, b in boxes_of.items()}
    labels = {i: np.asarray(l, np.int64).reshape(-1) for i, l in labels_of.items()}
    return CocoSet(root=root, classes=[categories[c] for c in cat_ids], images=images, boxes=boxes,
                   labels=labels, annotations_path=path)


def check_same_classes(train_set: CocoSet, val_set: CocoSet) -> None:
    """A validation set is scored against the training set's labels: the two files must list the same
    categories (same names in the same id order). ValueError naming both files otherwise."""
    if list(val_set.classes) != list(train_set.classes):
        raise ValueError(f"{val_set.annotations_path} has classes {val_set.classes}, the training file "
                         f"{train_set.annotations_path} has {train_set.classes}: the two files must list the "
                         "same categories")


def read_image(path) -> np.ndarray:
    """An image file as HxWx3 uint8 BGR, read as the engine reads one (runtime.images.load_image:
    grayscale becomes 3 channels, alpha is dropped, 16-bit is scaled to 8).

    Raises FileNotFoundError naming the file when it is missing, ValueError naming it when it cannot be
    decoded."""
    return load_image(Path(path))
