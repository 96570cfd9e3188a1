"""The images a collection names: CLI arguments -> items (image id, path), in order, each once.

Inputs: image files, folders (recursively, files with an image suffix), globs, text files of paths
(.txt / .lst: one path a line, relative to the list's folder) and COCO files (.json: their `images`, ids
kept, file_name relative to --image-root, else the COCO file's folder or its images/ folder, as
model.synth writes them). A path reached twice is read once. Image ids: the COCO id, or --annotations'
id for the base name, else the path as found (normalised, '/'-separated): unique per input path.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm",
                  ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic"}
LIST_SUFFIXES = {".txt", ".lst"}
COCO_SUFFIXES = {".json"}


class CollectionError(ValueError):
    """A problem found before the first image (inputs, outputs, settings): the message names it."""


@dataclass(frozen=True)
class Item:
    id: int | str   # the image id its results carry
    path: str       # the file read


def key(image_id) -> str:
    """One string per image id, telling 1 from "1" (ids are dictionary keys and Ray Data columns)."""
    return json.dumps(image_id)


@dataclass
class Collection:
    items: list[Item]
    categories: dict = field(default_factory=dict)  # category name -> id, from COCO inputs


def collect(specs, annotations=None, image_root=None) -> Collection:
    """The images that specs (CLI arguments) name, in order, each once; raises CollectionError naming a
    spec that names nothing (a missing path, a glob without matches, a folder without images)."""
    items, categories, seen_files = [], {}, {}
    by_base = _annotation_ids(annotations) if annotations is not None else None
    for spec in map(str, specs):
        for image_id, path in _expand(spec, image_root, categories):
            real = os.path.realpath(path)
            if real in seen_files:
                continue  # a folder and a glob that overlap: read once
            if image_id is None:
                image_id = by_base.get(Path(path).name, None) if by_base is not None else None
                if image_id is None:
                    image_id = Path(os.path.normpath(path)).as_posix()
            seen_files[real] = len(items)
            items.append(Item(image_id, path))
    seen_ids = {}
    for item in items:
        other = seen_ids.setdefault(key(item.id), item)
        if other is not item:
            raise CollectionError(f"{other.path} and {item.path} would both get image id {item.id!r} "
                                  "(a COCO file or --annotations with a repeated id or base name)")
    if not items:
        raise CollectionError("no images given")
    return Collection(items, categories)


def _expand(spec: str, image_root, categories: dict):
    """(image id or None, path) for each image one CLI argument names."""
    path = Path(spec)
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise CollectionError(f"{spec}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [(None, p) for p in found]
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in LIST_SUFFIXES:
            return [(None, p) for p in _list_file(path)]
        if suffix in COCO_SUFFIXES:
            return _coco_file(path, image_root, categories)
        return [(None, spec)]  # an image (unknown suffixes too: the decoder decides)
    if glob.has_magic(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise CollectionError(f"{spec}: no file matches this pattern")
        out = []
        for m in matches:
            out += _expand(m, image_root, categories) if os.path.isdir(m) else [(None, m)]
        return out
    if path.exists():
        raise CollectionError(f"{spec}: not a file or folder")
    raise CollectionError(f"{spec}: no such file or folder")


def _list_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CollectionError(f"{path}: cannot read the list of paths ({e})") from None
    base = path.parent
    entries = [line.strip() for line in lines]
    return [os.path.normpath(os.path.join(base, e)) for e in entries if e and not e.startswith("#")]


def _coco_file(path: Path, image_root, categories: dict) -> list:
    try:
        coco = json.loads(path.read_text())
        images = coco["images"]
        pairs = [(im["id"], im["file_name"]) for im in images]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CollectionError(f"{path}: not a readable COCO file ({e})") from None
    except (KeyError, TypeError) as e:
        raise CollectionError(f"{path}: a COCO file needs 'images', each with 'id' and 'file_name' "
                              f"(missing {e})") from None
    for c in coco.get("categories", []) if isinstance(coco, dict) else []:
        if categories.setdefault(c["name"], c["id"]) != c["id"]:
            raise CollectionError(f"{path}: category {c['name']!r} has id {c['id']}, another input gave "
                                  f"{categories[c['name']]}")
    roots = [Path(image_root)] if image_root is not None else [path.parent, path.parent / "images"]
    out = []
    for image_id, name in pairs:
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise CollectionError(f"{path}: image id {image_id!r} is neither an integer nor a string")
        candidates = [str(r / name) for r in roots]
        out.append((image_id, next((c for c in candidates if os.path.isfile(c)), candidates[0])))
    return out


def _annotation_ids(path) -> dict:
    """--annotations: file base name -> image id."""
    try:
        coco = json.loads(Path(path).read_text())
        return {Path(im["file_name"]).name: im["id"] for im in coco.get("images", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CollectionError(f"--annotations {path}: not a readable COCO file ({e})") from None


def category_ids(classes, categories: dict, source: str, required: bool = False):
    """Class index -> category id: the ids of the same names in `categories`, or None (label + 1) when
    there are none and none are required."""
    if not categories and not required:
        return None
    missing = [c for c in classes if c not in categories]
    if missing:
        raise CollectionError(f"{source} has no categories named {missing} (the bundle's classes)")
    return [categories[c] for c in classes]
