"""Engine-level agreement of the backends that can run here with onnxruntime on the CPU (the reference):
TensorRT and onnxruntime-gpu (and torch) on CUDA, through detect_batch on generated validation images.
A backend that cannot run here prints one line saying why. Prints, per backend, the share of the
reference's confident detections (score >= --min-score) found again (same label, IoU >= 0.9, score
within 0.02) and how many images got the same chips at every scale.

    python benchmarks/backend_parity.py --bundle bundles/default --images 16
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from model.synth import generate_image
from runtime import backends
from runtime.bundle import load_bundle
from runtime.engine import AutoFocusEngine

CANDIDATES = (("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("torch", "cuda"))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], 1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def agreement(ref, got, min_score: float) -> tuple[int, int]:
    """(reference detections >= min_score, of them found in got)."""
    total = found = 0
    for r, g in zip(ref, got):
        keep = r.scores >= min_score
        total += int(keep.sum())
        if not keep.any() or not len(g):
            continue
        iou = _iou(r.boxes[keep], g.boxes)
        ok = (iou >= 0.9) & (r.labels[keep][:, None] == g.labels[None]) & \
             (np.abs(r.scores[keep][:, None] - g.scores[None]) <= 0.02)
        found += int(ok.any(1).sum())
    return total, found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--min-score", type=float, default=0.3)
    args = p.parse_args(argv)
    bundle = load_bundle(args.bundle)
    images = [generate_image(2026, i)[0] for i in range(args.images)]
    ref = AutoFocusEngine(bundle, backend="onnxruntime", device="cpu", padding="bucket").detect_batch(images)
    worst = 1.0
    for name, device in CANDIDATES:
        reason = backends.unavailable_reason(name, bundle, device) if backends.cuda_unavailable_reason() is None \
            else backends.cuda_unavailable_reason()
        if reason is not None:
            print(f"{name} on {device}: skipped ({reason})")
            continue
        got = AutoFocusEngine(bundle, backend=name, device=device).detect_batch(images)
        total, found = agreement(ref, got, args.min_score)
        same_chips = sum(all(len(a) == len(b) and np.allclose(a, b, atol=1.0) for a, b in zip(r.chips, g.chips))
                         for r, g in zip(ref, got))
        share = found / total if total else 1.0
        worst = min(worst, share)
        print(f"{name} on {device} vs onnxruntime on cpu: {found}/{total} = {share:.3f} of detections >= "
              f"{args.min_score} matched (IoU >= 0.9, |score diff| <= 0.02); same chips on {same_chips}/{len(images)} "
              "images")
    return 0 if worst >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
