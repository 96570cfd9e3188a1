"""Inference over a collection of images that never loses a result (python -m runtime; README).

    inputs -> items (image id, path) -> outputs checked -> shards (JSON Lines, one file per finished
    group of images, written atomically) -> merged into the COCO results file, in input order.

Inputs: runtime/inputs.py; the work folder, shards and merge: runtime/shards.py; --viz: runtime/drawings.py.
Drawings are written before their shard, so an image whose result is on disk has its drawing too.

Exit status (python -m runtime): 0 all images have results; 1 some failed (listed in <out stem>.failures.json,
path and reason); 2 nothing ran (bad arguments or outputs).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .cli_options import above_threshold
from .drawings import draw, drawing_name
from .inputs import CollectionError, Item, category_ids, collect, key
from .shards import ShardStore, atomic_write, merge, plan_outputs


# ------------------------------------------------------------------------------------ images -> records

def read_image(path: str):
    """(image, None) or (None, reason): one unreadable file must not stop the collection."""
    from .images import load_image
    try:
        return load_image(path, path), None
    except Exception as e:  # noqa: BLE001 - any failure to read is recorded with its reason, and the run goes on
        return None, f"{type(e).__name__}: {e}"


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
