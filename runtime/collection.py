"""Inference over a collection of images that never loses a result (python -m runtime; README).

    inputs -> items (image id, path) -> outputs checked -> shards (JSON Lines, one file per finished
    group of images, written atomically) -> merged into the COCO results file, in input order.

Inputs: image files, folders (recursively, files with an image suffix), globs, text files of paths
(.txt / .lst: one path a line, relative to the list's folder) and COCO files (.json: their `images`, ids
kept, file_name relative to --image-root, else the COCO file's folder or its images/ folder, as
model.synth writes them). A path reached twice is read once. Image ids: the COCO id, or --annotations'
id for the base name, else the path as found (normalised, '/'-separated): unique per input path.

Work folder (default <out>.parts beside --out): run.json (what produced the shards: a re-run with other
settings is refused rather than mixed in), shard files, a lock. A re-run with the same --out reads the
shards and runs only the images without a result; failures are retried. Drawings are written before
their shard, so an image whose result is on disk has its drawing too.

Exit status (python -m runtime): 0 all images have results; 1 some failed (listed in <out stem>.failures.json,
path and reason); 2 nothing ran (bad arguments or outputs).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .cli_options import above_threshold

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm",
                  ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic"}
LIST_SUFFIXES = {".txt", ".lst"}
COCO_SUFFIXES = {".json"}
SHARD_SUFFIX = ".jsonl"
CHIP_COLOURS = [(255, 128, 0), (0, 200, 0), (0, 0, 255), (0, 220, 220)]  # BGR per scale


class CollectionError(ValueError):
    """A problem found before the first image (inputs, outputs, settings): the message names it."""


@dataclass(frozen=True)
class Item:
    id: int | str   # the image id its results carry
    path: str       # the file read


def key(image_id) -> str:
    """One string per image id, telling 1 from "1" (ids are dictionary keys and Ray Data columns)."""
    return json.dumps(image_id)


def drawing_name(item: Item) -> str:
    """--viz file name: the image's stem (readable) and a digest of its id (unique per input path)."""
    digest = hashlib.sha1(key(item.id).encode()).hexdigest()[:10]
    return f"{Path(item.path).stem}-{digest}.png"


# ------------------------------------------------------------------------------------ inputs

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


# ------------------------------------------------------------------------------------ outputs

@dataclass
class Outputs:
    out: Path | None        # COCO results (None: stdout, no shards)
    failures: Path | None
    work: Path | None       # shards folder
    viz: Path | None


def plan_outputs(items, out=None, viz=None, work=None) -> Outputs:
    """Checks every output before the first image: parent folders exist and are writable, no output is a
    folder where a file goes (or the reverse) and none is an input file. Creates nothing (run does, once
    all is checked)."""
    inputs = {os.path.realpath(i.path) for i in items}

    def not_an_input(path: Path, what: str):
        if os.path.realpath(path) in inputs:
            raise CollectionError(f"{what} {path} is one of the input images: it would be overwritten")

    def writable_file(path: Path, what: str):
        if path.is_dir():
            raise CollectionError(f"{what} {path} is a folder; give a file name")
        parent = path.parent
        if not parent.is_dir():
            raise CollectionError(f"{what} {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise CollectionError(f"{what} {path}: not writable")
        not_an_input(path, what)

    def folder(path: Path, what: str):
        """An existing writable folder, or one that can be made (created when the run starts)."""
        if path.exists() and not path.is_dir():
            raise CollectionError(f"{what} {path} exists and is not a folder")
        not_an_input(path, what)
        existing = path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise CollectionError(f"{what} {path}: {existing} is not a writable folder")

    failures = None
    if work is not None and out is None:
        raise CollectionError("--work needs --out (the shards are merged into it)")
    if out is not None:
        out = Path(out)
        writable_file(out, "--out")
        failures = out.with_name(f"{out.stem}.failures.json")
        writable_file(failures, "failures file")
        work = Path(work) if work is not None else out.with_name(out.name + ".parts")
        folder(work, "work folder")
    if viz is not None:
        viz = Path(viz)
        folder(viz, "--viz")
        for item in items:  # with drawing_name's digest no drawing can be an input; checked, not assumed
            not_an_input(viz / drawing_name(item), "--viz drawing")
    return Outputs(out, failures, work, viz)


@contextmanager
def atomic_open(path):
    """A binary file that becomes `path` in one step when the block ends without an error (temp file in
    the same folder, fsync, os.replace): a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path, data: bytes):
    with atomic_open(path) as f:
        f.write(data)


# ------------------------------------------------------------------------------------ shards

class ShardStore:
    """The work folder: run.json, shards (<writer>-<n>.jsonl, one record a line: {"id", "path",
    "results"} or {"id", "path", "error"}) and a lock that keeps two runs from sharing it."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self._lock = None

    def open(self, settings: dict):
        """Takes the lock and checks (or records) the settings the shards were made with."""
        import fcntl
        self._lock = open(self.folder / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise CollectionError(f"work folder {self.folder}: another run is using it") from None
        for stale in self.folder.glob(".*.tmp"):  # a killed run's half-written shard; no writer runs now
            stale.unlink(missing_ok=True)
        run = self.folder / "run.json"
        if run.is_file():
            try:
                before = json.loads(run.read_text())
            except ValueError:
                before = None
            if before != settings:
                differ = sorted(k for k in set(settings) | set(before or {})
                                if (before or {}).get(k) != settings.get(k))
                raise CollectionError(f"work folder {self.folder} holds results made with other settings "
                                      f"({', '.join(differ)}); delete it or choose another --out")
        else:
            atomic_write(run, json.dumps(settings, indent=1).encode())
        return self

    def close(self):
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def write(self, records: list, writer: str, index: int) -> Path:
        path = self.folder / f"{writer}-{index:06d}{SHARD_SUFFIX}"
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in records).encode())
        return path

    def read(self) -> tuple[dict, dict]:
        """(key -> (detections, their COCO entries as JSON text without brackets), key -> failure record)
        of every shard; a result wins over a failure of the same image, the first result over a later one.
        Text, not dicts: a few hundred bytes a detection rather than kilobytes, for millions of images."""
        results, failures = {}, {}
        for shard in sorted(self.folder.glob(f"*{SHARD_SUFFIX}")):
            try:
                records = [json.loads(line) for line in shard.read_text().splitlines() if line]
            except (OSError, ValueError) as e:
                print(f"warning: {shard} is unreadable ({e}); its images run again", file=sys.stderr)
                continue
            for r in records:
                k = key(r["id"])
                if "results" in r:
                    if k not in results:
                        results[k] = (len(r["results"]), json.dumps(r["results"])[1:-1])
                else:
                    failures[k] = r
        return results, {k: v for k, v in failures.items() if k not in results}


def merge(items, results: dict, failures: dict, outputs: Outputs) -> list:
    """Writes --out (every item's results, in input order: the same bytes as json.dumps of the entries)
    and the failures file ([{"path", "id", "reason"}]); returns the failures of this collection's items."""
    failed, first = [], True
    with atomic_open(outputs.out) as f:
        f.write(b"[")
        for item in items:
            k = key(item.id)
            if k in results:
                if results[k][0]:
                    f.write((("" if first else ", ") + results[k][1]).encode())
                    first = False
            else:
                reason = failures[k]["error"] if k in failures else "not processed"
                failed.append({"path": item.path, "id": item.id, "reason": reason})
        f.write(b"]")
    atomic_write(outputs.failures, json.dumps(failed, indent=1).encode())
    return failed


# ------------------------------------------------------------------------------------ images -> records

def read_image(path: str):
    """(image, None) or (None, reason): one unreadable file must not stop the collection."""
    from .images import load_image
    try:
        return load_image(path, path), None
    except Exception as e:  # noqa: BLE001 - any failure to read is recorded with its reason, and the run goes on
        return None, f"{type(e).__name__}: {e}"


def draw(image, detections, classes):
    """A copy of image (BGR) with each scale's chips (scale 1 blue, 2 green, 3 red, further scales yellow)
    and the detections (white, with class and score)."""
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


class BatchWorker:
    """Decoded images -> shard records (and drawings), for the single process and for each Ray actor
    alike, so that both give the same results image for image. On CUDA images go through
    engine.detect_batch in groups of batch_size (a GPU call costs more than its pixels); on the CPU one
    at a time, which also keeps each image's result independent of which images share its batch."""

    def __init__(self, engine, mode: str, category_ids=None, viz=None, batch_size: int = 8,
                 score_threshold: float = 0.0):
        self.engine, self.mode, self.category_ids = engine, mode, category_ids
        self.score_threshold = score_threshold
        self.viz = Path(viz) if viz is not None else None
        self.batch_size = batch_size if engine.device == "cuda" else 1

    def process(self, items: list, images: list, errors: list) -> list:
        """Records for items (images[i] decoded, or errors[i] the reason it is not)."""
        records = [None] * len(items)
        for i, (item, error) in enumerate(zip(items, errors)):
            if error is not None:
                records[i] = {"id": item.id, "path": item.path, "error": error}
        ready = [i for i in range(len(items)) if records[i] is None]
        for start in range(0, len(ready), self.batch_size):
            group = ready[start:start + self.batch_size]
            for i, (det, error) in zip(group, self._detect([images[i] for i in group])):
                records[i] = self._record(items[i], images[i], det, error)
        return records

    def _detect(self, images: list) -> list:
        """[(Detections, None) or (None, reason)]: a group that fails runs again image by image, so that
        only the image at fault is recorded as failed."""
        try:
            return [(d, None) for d in self.engine.detect_batch(images, mode=self.mode)]
        except Exception as e:  # noqa: BLE001 - recorded per image below
            if len(images) == 1:
                return [(None, f"{type(e).__name__}: {e}")]
        return [self._detect([image])[0] for image in images]

    def _record(self, item: Item, image, det, error) -> dict:
        if error is not None:
            return {"id": item.id, "path": item.path, "error": error}
        det = above_threshold(det, self.score_threshold)
        entries = det.to_coco(item.id)
        if self.category_ids is not None:
            for e in entries:
                e["category_id"] = self.category_ids[e["category_id"] - 1]
        if self.viz is not None:
            import cv2
            ok, png = cv2.imencode(".png", draw(image, det, self.engine.classes))
            if ok:
                atomic_write(self.viz / drawing_name(item), png.tobytes())
        return {"id": item.id, "path": item.path, "results": entries}


# ------------------------------------------------------------------------------------ one process

def writer_name() -> str:
    """Shard file prefix unique to this process (several processes, several hosts write one folder)."""
    return f"{socket.gethostname()}-{os.getpid()}-{time.time_ns() % 10**12:012d}"


def run_local(worker: BatchWorker, todo: list, store: ShardStore | None, shard_size: int, progress) -> list:
    """Runs todo shard by shard, decoding the next shard in a thread while the engine runs on this one
    (OpenCV decodes without the GIL). Each finished shard goes to store (None: records are returned).
    Interrupted (Ctrl-C), the images finished so far are written first."""
    chunks = [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]
    name, kept = writer_name(), []

    def decode(chunk):
        pairs = [read_image(item.path) for item in chunk]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    with ThreadPoolExecutor(1) as pool:
        upcoming = pool.submit(decode, chunks[0]) if chunks else None
        for n, chunk in enumerate(chunks):
            images, errors = upcoming.result()
            upcoming = pool.submit(decode, chunks[n + 1]) if n + 1 < len(chunks) else None
            records = []
            try:
                for start in range(0, len(chunk), worker.batch_size):
                    group = slice(start, start + worker.batch_size)
                    records += worker.process(chunk[group], images[group], errors[group])
                    progress.update(len(chunk[group]))
            except KeyboardInterrupt:
                if store is not None and records:
                    store.write(records, name, n)
                raise
            if store is not None:
                store.write(records, name, n)
            else:
                kept += records
    return kept


# ------------------------------------------------------------------------------------ a whole run

@dataclass
class RunOptions:
    bundle: str = "bundles/default"
    mode: str = "autofocus"
    overrides: dict = field(default_factory=dict)   # engine parameters (--scale, --max-detections)
    score_threshold: float = 0.0                    # detections written and drawn score at least this
    backend: str = "auto"
    device: str | None = None
    shard_size: int = 64                            # images a shard (at most this many lost when killed)
    batch_size: int = 8                             # images an engine call, on CUDA
    ray: str | None = None                          # None: one process; "auto" or an address: Ray Data
    workers: int | None = None                      # Ray actors (default: one per GPU, else CPUs // 4)


def run(specs, outputs_or_paths: dict, options: RunOptions, annotations=None, image_root=None,
        progress: bool = True) -> int:
    """The whole command: returns the exit status (0 all done, 1 some images failed); raises
    CollectionError (or the bundle's ValueError) before the first image when it cannot run."""
    from tqdm import tqdm
    from .bundle import load_bundle
    from . import params
    collection = collect(specs, annotations, image_root)
    outputs = plan_outputs(collection.items, **outputs_or_paths)
    if options.ray is not None and outputs.out is None:
        raise CollectionError("--ray needs --out (the actors write shards beside it)")
    bundle = load_bundle(options.bundle)
    params.check_names(options.overrides, "python -m runtime")
    ids = _category_ids(bundle.classes, collection.categories, annotations)
    settings = {"bundle": hashlib.sha256(bundle.path("bundle.json").read_bytes()).hexdigest(),
                "mode": options.mode, "overrides": options.overrides, "backend": options.backend,
                "score_threshold": options.score_threshold,
                "category_ids": ids}
    distributed = None
    if options.ray is not None:
        from . import distributed
        distributed.connect(options.ray)  # fails within seconds when Ray or the cluster is not there
    for folder in (outputs.work, outputs.viz):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    store = ShardStore(outputs.work).open(settings) if outputs.work is not None else None
    engine = None
    try:
        if distributed is None:
            from .engine import AutoFocusEngine
            engine = AutoFocusEngine(bundle, backend=options.backend, device=options.device, **options.overrides)
            print(f"{engine.backend_name} on {engine.device}, mode {options.mode}", file=sys.stderr)
        done, _ = store.read() if store is not None else ({}, {})
        todo = [i for i in collection.items if key(i.id) not in done]
        if len(todo) < len(collection.items):
            print(f"{len(collection.items) - len(todo)} of {len(collection.items)} images already done "
                  f"({outputs.work})", file=sys.stderr)
        with tqdm(total=len(collection.items), initial=len(collection.items) - len(todo), unit="img",
                  desc="images", disable=not progress, file=sys.stderr, smoothing=0.1) as bar:
            if distributed is not None:
                distributed.run(todo, options, ids, outputs, bar)
                records = []
            else:
                worker = BatchWorker(engine, options.mode, ids, outputs.viz, options.batch_size,
                                     options.score_threshold)
                records = run_local(worker, todo, store, options.shard_size, bar)
        if store is None:
            return _print_results(collection.items, records)
        results, failures = store.read()
        failed = merge(collection.items, results, failures, outputs)
    finally:
        if store is not None:
            store.close()
        if engine is not None:
            engine.close()
    n, detections = len(collection.items), sum(results.get(key(i.id), (0,))[0] for i in collection.items)
    summary = f"{n - len(failed)} of {n} images done ({detections} detections) -> {outputs.out}"
    if failed:
        summary += f"; {len(failed)} failed (first: {failed[0]['reason']}) -> {outputs.failures}"
    print(summary, file=sys.stderr)
    return 1 if failed else 0


def _category_ids(classes, categories: dict, annotations):
    if annotations is not None:  # asked for by name: every class must be there
        coco = json.loads(Path(annotations).read_text())
        return category_ids(classes, {c["name"]: c["id"] for c in coco.get("categories", [])},
                           f"--annotations {annotations}", required=True)
    if categories and any(c not in categories for c in classes):
        print(f"warning: the COCO input's categories do not name all of the bundle's classes {list(classes)}; "
              "category_id is the class index + 1", file=sys.stderr)
        return None
    return category_ids(classes, categories, "COCO input")


def _print_results(items, records) -> int:
    """No --out: results to stdout (input order), failures to stderr."""
    by_key = {key(r["id"]): r for r in records}
    entries, failed = [], []
    for item in items:
        r = by_key[key(item.id)]
        if "results" in r:
            entries += r["results"]
        else:
            failed.append(r)
            print(f"failed: {r['path']}: {r['error']}", file=sys.stderr)
    print(json.dumps(entries))
    if failed:
        print(f"{len(items) - len(failed)} of {len(items)} images done; {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0
