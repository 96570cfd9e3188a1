"""Helpers of the collection tests (tests/test_cli_collection.py, tests/test_distributed.py): image files on
disk, the CLI in a subprocess, and what the shards of a work folder hold."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2

from engine_fixtures import val_images

REPO = Path(__file__).resolve().parent.parent


def small_images(count: int):
    """count distinct ~120 x 200 BGR images (crops of generated val images: the cascade runs them in a few
    ms with the test bundle)."""
    sources = [im for im, _, _ in val_images(4)]
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        y, x = (17 * i) % (src.shape[0] - 120), (29 * i) % (src.shape[1] - 200)
        out.append(src[y:y + 120, x:x + 200].copy())
    return out


def write_images(folder: Path, images, names=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / (names[i] if names else f"img_{i:03d}.png"))
        assert cv2.imwrite(str(paths[-1]), image)
    return paths


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "runtime", *map(str, args), "--no-progress"]


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def run_cli(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def shard_records(work: Path) -> list[dict]:
    """Every record of every shard in the work folder, in no particular order."""
    records = []
    for shard in sorted(work.glob("*.jsonl")):
        records += [json.loads(line) for line in shard.read_text().splitlines() if line]
    return records


def kill_after_shards(command: list, work: Path, shards: int = 2, timeout: float = 240) -> None:
    """Runs command (a CLI run writing its shards into work) and SIGKILLs it once `shards` shard files
    exist (or it ended, or timeout passed): an interrupted run, as a crash or a power cut leaves it."""
    proc = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while len(list(work.glob("*.jsonl"))) < shards and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
