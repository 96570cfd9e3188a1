"""What the benchmark scripts share: the evaluation set, the engine, pixel counts, the machine record,
plain-text tables, and a tap on the engine's network calls (capture for visualize.py, reuse for sweep.py).

Accuracy is always pycocotools' (model.evaluate.coco_metrics); nothing here evaluates on its own.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / "default"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ------------------------------------------------------------------------------------ data

@dataclass
class EvalSet:
    coco: object            # model.data.CocoSet (annotations_path feeds pycocotools)
    infos: list             # the image records used (after --limit)
    images: list            # HxWx3 uint8 BGR arrays, decoded once so decoding is never timed


def add_common_arguments(p) -> None:
    """The options every benchmark shares: which bundle, backend and device, and which images."""
    p.add_argument("--bundle", help=f"bundle folder (default {DEFAULT_BUNDLE})")
    p.add_argument("--backend", default="auto", help="auto | tensorrt | onnxruntime | torch")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: where the backend runs")
    p.add_argument("--split", default="val", choices=("val", "tune", "test"),
                   help="which generated split (default val; tune: for choosing settings, see sweep.py; test: "
                        "1,000 images, for tighter AP figures)")
    p.add_argument("--annotations", help="COCO JSON (default: the generated --split)")
    p.add_argument("--images", help="image folder (default: <annotations folder>/images)")
    p.add_argument("--limit", type=int, help="the first N images only")


def add_output_arguments(p, what: str = "the figures", progress: bool = True) -> None:
    """--json FILE (also write `what` there) and, for scripts with a progress bar, --no-progress."""
    p.add_argument("--json", help=f"also write {what} to this file")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bar")


def write_json(path, record: dict) -> None:
    """The --json file, when one was asked for."""
    if path:
        Path(path).write_text(json.dumps(record, indent=2))


# Bad arguments or input: main prints the message and returns USER_ERROR_STATUS, without a traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)
USER_ERROR_STATUS = 2


def user_error(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return USER_ERROR_STATUS


def load_eval_set(annotations=None, images_dir=None, limit: int | None = None, split: str = "val") -> EvalSet:
    """A COCO set (default: the generated `split`, model.synth.ensure_split(split)), its first `limit`
    images decoded into memory."""
    from model.data import load_coco, read_image
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected a positive number of images, got {limit!r}")
    if annotations is None:
        from model.synth import ensure_split
        annotations = ensure_split(split) / "annotations.json"
    coco = load_coco(annotations, images_dir)
    infos = coco.images[:limit] if limit else list(coco.images)
    if not infos:
        raise ValueError(f"annotations: {annotations} lists no images")
    return EvalSet(coco, infos, [read_image(info["path"]) for info in infos])


def eval_set_from_args(args) -> EvalSet:
    """load_eval_set with the options add_common_arguments defines."""
    return load_eval_set(args.annotations, args.images, args.limit, args.split)


def open_engine(bundle=None, backend: str = "auto", device: str | None = None, **overrides):
    """AutoFocusEngine on `bundle` (default bundles/default), with a build hint when it is missing."""
    from runtime import AutoFocusEngine
    folder = Path(bundle) if bundle is not None else DEFAULT_BUNDLE
    if not (folder / "bundle.json").is_file():
        raise FileNotFoundError(f"bundle: no bundle.json in {folder}; build one with `python export/build_engine.py`"
                                f" (or `--random-init --out {folder}` for a random-weight bundle), or pass --bundle")
    return AutoFocusEngine(str(folder), backend=backend, device=device, **overrides)


# ------------------------------------------------------------------------------------ figures

def pixels(stats: dict) -> tuple[int, int]:
    """(real, padded) network-input pixels of one engine call, all scales together (engine.last_stats)."""
    return (sum(s["pixels"] for s in stats["scales"]), sum(s["padded_pixels"] for s in stats["scales"]))


def coco_metrics(eval_set: EvalSet, detections: dict) -> dict:
    """{image_id: Detections} -> AP, AP50, AP75, APs, APm, APl (%) from pycocotools."""
    return metrics_of(coco_eval(eval_set, detections))


def coco_eval(eval_set: EvalSet, detections: dict):
    """{image_id: Detections} -> pycocotools' per-image matches (model.evaluate.coco_eval; None: no
    detection at all), for metrics_of and a bootstrap (uncertainty.bootstrap_evals) without matching twice."""
    from model.evaluate import coco_eval as match
    return match(eval_set.coco, {i: (d.boxes, d.scores, d.labels) for i, d in detections.items()})


def metrics_of(ev) -> dict:
    """AP, AP50, AP75, APs, APm, APl (%) of coco_eval's result (model.evaluate.metrics_of)."""
    from model.evaluate import metrics_of as metrics
    return metrics(ev)


def machine() -> dict:
    """CPU model and cores, OS, and the GPU where torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def versions(extra=()) -> dict:
    out = {"python": platform.python_version()}
    for name in ("numpy", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "opencv-python-headless",
                 "pycocotools", *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def format_table(headers: list[str], rows: list[list]) -> str:
    """Right-aligned columns (the first left-aligned); floats as given, pre-formatted by the caller."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


# ------------------------------------------------------------------------------------ network tap

@contextmanager
def network_tap(engine, cache: dict | None = None, record: list | None = None):
    """Wraps the engine's network call for the duration of the block.

    cache: a dict; a batch seen before (same shape and bytes) returns the stored outputs instead of
    running the network again. The cascade is deterministic given the network's outputs, so a cached
    run gives the same detections and the same pixel accounting (last_stats counts inputs, not runs).
    record: a list; each call appends (input batch, outputs), e.g. to read the scale-1 focus map.
    The tap replaces the engine's public `infer` on the instance and restores it afterwards.
    """
    inner = engine.infer
    had_own = "infer" in vars(engine)

    def tapped(batch):
        key = None
        if cache is not None:
            host = batch.detach().cpu().numpy() if hasattr(batch, "detach") else np.asarray(batch)
            key = (tuple(host.shape), hashlib.blake2b(np.ascontiguousarray(host).tobytes(), digest_size=16).digest())
            if key in cache:
                out = cache[key]
                if record is not None:
                    record.append((batch, out))
                return out
        out = inner(batch)
        if cache is not None or record is not None:
            # Kept past the next infer, which may overwrite a backend's outputs (TensorRT's reused buffers).
            out = {k: v.clone() if hasattr(v, "clone") else np.array(v) for k, v in out.items()}
        if key is not None:
            cache[key] = out
        if record is not None:
            record.append((batch, out))
        return out

    engine.infer = tapped
    try:
        yield engine
    finally:
        if had_own:
            engine.infer = inner
        else:
            del engine.infer  # back to the class's bound method
