"""The outputs of a collection run, checked before the first image and written so that no result is lost.

Work folder (default <out>.parts beside --out): run.json (what produced the shards: a re-run with other
settings is refused rather than mixed in), shard files, a lock. A re-run with the same --out reads the
shards and runs only the images without a result; failures are retried. At the end the shards are merged
into the COCO results file, in input order, and the failures file.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .drawings import drawing_name
from .inputs import CollectionError, key

SHARD_SUFFIX = ".jsonl"


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
