"""One image as AutoFocus sees it (the paper's Fig. 8): the scale-1 focus map as a heat map, the
FocusChips of each finer scale (a colour per scale) and the final detections, written as a PNG.

    python benchmarks/visualize.py                        # the first image of the generated val split
    python benchmarks/visualize.py photo.jpg --out docs/figures/autofocus_example.png --score 0.4

The chips are the engine's own (Detections.chips, original pixels); the focus map is the scale-1
network output the engine computed for this call (read through common.network_tap: the engine does
not return intermediate maps), drawn over the image cells it covers (stride 16 at scale 1's factor).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python benchmarks/visualize.py`: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

DEFAULT_OUT = "docs/figures/autofocus_example.png"
# BGR colours of the chips of scale 2, 3, 4, ...
CHIP_COLOURS = ((0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 128, 255))
DETECTION_COLOUR = (80, 255, 80)


def focus_over_image(focus: np.ndarray, factor: float, stride: int, image_hw) -> np.ndarray:
    """A (cells_h, cells_w) focus map -> (H, W) float32 in image pixels: cell (i, j) covers original
    pixels [j * stride / factor, (j + 1) * stride / factor) across, likewise down (nearest, blocky)."""
    h, w = image_hw
    ys = np.minimum((np.arange(h) + 0.5) * factor / stride, focus.shape[0] - 1).astype(np.int64)
    xs = np.minimum((np.arange(w) + 0.5) * factor / stride, focus.shape[1] - 1).astype(np.int64)
    return focus[ys][:, xs].astype(np.float32)


def render(image: np.ndarray, heat: np.ndarray, chips: list, detections, classes, score: float = 0.5,
           alpha: float = 0.5) -> np.ndarray:
    """The figure as a BGR uint8 array: image with the heat map (per-pixel alpha = alpha * probability,
    so empty areas stay readable), chips of scales 2.. and detections scoring >= score, plus a legend
    strip below."""
    prob = np.clip(heat, 0.0, 1.0)
    colour = cv2.applyColorMap((prob * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    a = (alpha * prob)[..., None]
    out = (image.astype(np.float32) * (1 - a) + colour * a).astype(np.uint8)
    thick = max(1, round(max(image.shape[:2]) / 400))
    for s, boxes in enumerate(chips[1:]):  # scale 1 is the whole image
        c = CHIP_COLOURS[s % len(CHIP_COLOURS)]
        for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4):
            cv2.rectangle(out, (int(x1), int(y1)), (int(math.ceil(x2)) - 1, int(math.ceil(y2)) - 1), c, thick + 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    fs = 0.35 * thick
    for (x1, y1, x2, y2), sc, lab in zip(detections.boxes, detections.scores, detections.labels):
        if sc < score:
            continue
        cv2.rectangle(out, (int(x1), int(y1)), (int(math.ceil(x2)) - 1, int(math.ceil(y2)) - 1), DETECTION_COLOUR,
                      thick)
        name = classes[int(lab)] if 0 <= int(lab) < len(classes) else str(int(lab))
        cv2.putText(out, f"{name} {sc:.2f}", (int(x1), max(int(y1) - 3, 8)), font, fs, DETECTION_COLOUR, 1,
                    cv2.LINE_AA)
    return np.vstack([out, legend(out.shape[1], len(chips) - 1, score, thick)])


def legend(width: int, finer_scales: int, score: float, thick: int) -> np.ndarray:
    """A white strip naming what the colours mean, wrapped onto as many rows as the width needs."""
    font, fs = cv2.FONT_HERSHEY_SIMPLEX, 0.3 * thick + 0.1
    row = int(18 * thick)
    items = [("focus map (scale 1)", None)] + \
            [(f"scale-{s + 2} chips", CHIP_COLOURS[s % len(CHIP_COLOURS)]) for s in range(finer_scales)] + \
            [(f"detections >= {score:g}", DETECTION_COLOUR)]
    placed, x, y = [], 6, 0
    for text, colour in items:
        span = 34 + cv2.getTextSize(text, font, fs, 1)[0][0] + 14
        if x > 6 and x + span > width:
            x, y = 6, y + 1
        placed.append((x, y, text, colour))
        x += span
    strip = np.full((row * (y + 1), width, 3), 255, np.uint8)
    for x, y, text, colour in placed:
        top = y * row
        if colour is None:  # a small colour-map ramp
            ramp = cv2.applyColorMap(np.linspace(0, 255, 28).astype(np.uint8)[None].repeat(row // 2, 0),
                                     cv2.COLORMAP_JET)
            w = max(0, min(ramp.shape[1], width - x))
            strip[top + row // 4: top + row // 4 + ramp.shape[0], x:x + w] = ramp[:, :w]
        else:
            cv2.rectangle(strip, (x, top + row // 4), (x + 28, top + row * 3 // 4), colour, thick + 1)
        cv2.putText(strip, text, (x + 34, top + row * 2 // 3), font, fs, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def visualize(engine, image: np.ndarray, score: float = 0.5, alpha: float = 0.5) -> tuple[np.ndarray, dict]:
    """Runs the engine (autofocus) on one BGR image and renders the figure; returns (BGR array, summary)."""
    from runtime.geometry import resized_image_size, scale_factor
    record = []
    with common.network_tap(engine, record=record):
        det = engine(image, mode="autofocus")
    h, w = image.shape[:2]
    factor = scale_factor(h, w, engine.params.scales[0])
    rh, rw = resized_image_size(h, w, factor)
    stride = engine.bundle.strides["focus"]
    focus = record[0][1]["focus"]  # the first call is scale 1 of the whole image
    focus = np.asarray(focus.detach().cpu() if hasattr(focus, "detach") else focus)
    focus = focus[0, 1, :math.ceil(rh / stride), :math.ceil(rw / stride)]
    heat = focus_over_image(focus, factor, stride, (h, w))
    canvas = render(image, heat, det.chips, det, engine.classes, score, alpha)
    summary = {"chips": [len(c) for c in det.chips], "detections": int((det.scores >= score).sum()),
               "pixels": common.pixels(engine.last_stats)[0], "focus_max": float(focus.max()) if focus.size else 0.0}
    return canvas, summary


def default_image() -> Path:
    from model.data import load_coco
    from model.synth import ensure_split
    return load_coco(ensure_split("val") / "annotations.json").images[0]["path"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/visualize.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", nargs="?", help="image file (default: the first image of the generated val split)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"PNG to write (default {DEFAULT_OUT})")
    p.add_argument("--bundle", help=f"bundle folder (default {common.DEFAULT_BUNDLE})")
    p.add_argument("--backend", default="auto", help="auto | tensorrt | onnxruntime | torch")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: where the backend runs")
    p.add_argument("--score", type=float, default=0.5, help="draw detections scoring at least this (default 0.5)")
    p.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity at probability 1 (default 0.5)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0 <= args.alpha <= 1:
            raise ValueError(f"--alpha: expected a value in [0, 1], got {args.alpha}")
        from model.data import read_image
        engine = common.open_engine(args.bundle, args.backend, args.device)
        path = Path(args.image) if args.image else default_image()
        canvas, summary = visualize(engine, read_image(path), args.score, args.alpha)
    except common.USER_ERRORS as e:
        return common.user_error(e)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), canvas):
        print(f"error: --out: could not write {out} (a .png path in a writable folder?)", file=sys.stderr)
        return 2
    print(f"{path}: chips per scale {summary['chips']}, {summary['detections']} detections >= {args.score:g}, "
          f"{summary['pixels']} input pixels; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
