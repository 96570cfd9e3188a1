"""Synthetic small-object detection dataset (COCO JSON + JPEG), generated deterministically.

No detection data can be downloaded here, so the project trains and evaluates on scenes drawn by this
module. The scenes are built so that multi-scale inference matters the way it does on COCO: a COCO-like
mix of object sizes (about 40% small < 32 px, 35% medium, 25% large > 96 px by sqrt of box area), small
objects gathered in 1-3 clusters per image (crowds, parking rows, shelves, flocks) so a FocusChip covers
them while covering a minority of the image, textured cluttered backgrounds, unannotated distractors,
partial occlusion and objects cut by the image border.

Every image is drawn from its own random generator seeded by (seed, index) through numpy's SeedSequence,
so the same command writes the same bytes, and any subset of images can be regenerated independently.

CLI: ``python3 -m model.synth --split {train,val,tune,test} [--seed S] [--count N] [--out DIR] [--workers W]``.
"""
from __future__ import annotations

import argparse
import colorsys
import fcntl
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Bump when the drawing changes: ensure_split regenerates a split written by another version.
GENERATOR_VERSION = 2

CLASSES = ("car", "person", "sign", "crate", "bird")

REPO_ROOT = Path(__file__).resolve().parents[1]
# split -> (seed, image count); the output folder defaults to <repo>/data/<split>. "tune" is for choosing
# inference settings (benchmarks/sweep.py --split tune), so that val only ever measures. "test" measures
# too, on more images: an AP gap between modes on val's 300 moves by about +-0.4 from one draw of images
# to another (fps.py's bootstrap intervals), on test's 1,000 by about +-0.2.
DEFAULT_SPLITS = {"train": (0, 2000), "val": (2026, 300), "tune": (77, 200), "test": (9001, 1000)}

JPEG_QUALITY = 90

# Size classes by sqrt(box area), as COCO defines them.
SMALL_MAX = 32.0
MEDIUM_MAX = 96.0
MIN_SIZE = 6.0
MAX_SIZE = 300.0
# Fractions of the objects drawn per size class (tuned so the kept annotations land near 40/35/25).
SIZE_CLASS_PROBS = (0.43, 0.34, 0.23)

MIN_VISIBLE_UNOCCLUDED = 0.4  # drop an annotation when more than 60% of it is hidden by others
MIN_VISIBLE_IN_IMAGE = 0.4    # drop an annotation when less than 40% of it lies inside the image
MAX_COVER_BY_ONE = 0.45       # placement: one new object may hide at most this share of an older box


# --------------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------------

def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0,1] -> BGR float32 in [0,255] (colorsys: plain Python, identical on every machine)."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array([b * 255.0, g * 255.0, r * 255.0], dtype=np.float32)


def _muted(rng: np.random.Generator, v_lo=0.25, v_hi=0.8, s_hi=0.3) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.0, s_hi), rng.uniform(v_lo, v_hi))


def _vivid(rng: np.random.Generator, hue=None, s_lo=0.6, v_lo=0.55) -> np.ndarray:
    h = rng.random() if hue is None else hue + rng.normal(0.0, 0.015)
    return _hsv(h, rng.uniform(s_lo, 1.0), rng.uniform(v_lo, 1.0))


def _jitter(rng: np.random.Generator, colour, amount=12.0) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.normal(0.0, amount, 3), 0, 255).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Shapes: each object is a list of layers (polygons + colour) in local pixel coordinates, centred on the
# object's nominal box; a layer is ("fill", [polygons], colour) or ("line", [polylines], colour, width).
# --------------------------------------------------------------------------------------------------

class _Frame:
    """Maps unit coordinates (u right, v down, both in [0, 1]) of a w x h box to centred pixels."""

    def __init__(self, w: float, h: float):
        self.w, self.h = w, h

    def pts(self, uv) -> np.ndarray:
        a = np.asarray(uv, np.float64)
        return np.stack([a[:, 0] * self.w - self.w / 2, a[:, 1] * self.h - self.h / 2], axis=1)

    def rect(self, u0, v0, u1, v1) -> np.ndarray:
        return self.pts([(u0, v0), (u1, v0), (u1, v1), (u0, v1)])

    def ellipse(self, u, v, ru, rv, n=28) -> np.ndarray:
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        return self.pts(np.stack([u + ru * np.cos(t), v + rv * np.sin(t)], axis=1))

    def circle(self, u, v, r_px, n=28) -> np.ndarray:
        """A circle that stays round whatever the box aspect (radius in pixels)."""
        return self.ellipse(u, v, r_px / self.w, r_px / self.h, n)

    def rounded_rect(self, u0, v0, u1, v1, r_px, n=6) -> np.ndarray:
        x0, y0, x1, y1 = u0 * self.w, v0 * self.h, u1 * self.w, v1 * self.h
        r = max(0.0, min(r_px, (x1 - x0) / 2, (y1 - y0) / 2))
        t = np.linspace(0.0, np.pi / 2, n)
        corners = []
        for cx, cy, start in ((x1 - r, y1 - r, 0.0), (x0 + r, y1 - r, np.pi / 2),
                              (x0 + r, y0 + r, np.pi), (x1 - r, y0 + r, 1.5 * np.pi)):
            corners.append(np.stack([cx + r * np.cos(start + t), cy + r * np.sin(start + t)], axis=1))
        p = np.concatenate(corners)
        return p - np.array([self.w / 2, self.h / 2])

    def octagon(self, ru, rv) -> np.ndarray:
        t = np.pi / 8 + np.arange(8) * np.pi / 4
        return self.pts(np.stack([0.5 + ru * np.cos(t), 0.5 + rv * np.sin(t)], axis=1))


def _car(rng, w, h):
    """Side view: rounded body + cabin in one vivid colour, two glass windows, lights, wheels with hubs."""
    f = _Frame(w, h)
    body = _vivid(rng) if rng.random() < 0.8 else _muted(rng, 0.2, 0.95, 0.1)  # some white/grey/black
    glass = _jitter(rng, (120, 95, 60), 10)
    wheel_r = 0.17 * h
    wv = 1.0 - wheel_r / h
    return [
        ("fill", [f.rounded_rect(0.0, 0.36, 1.0, 0.84, 0.14 * h),
                  f.pts([(0.18, 0.40), (0.30, 0.04), (0.70, 0.04), (0.84, 0.40)])], body),
        ("fill", [f.pts([(0.25, 0.37), (0.335, 0.11), (0.485, 0.11), (0.485, 0.37)]),
                  f.pts([(0.515, 0.37), (0.515, 0.11), (0.665, 0.11), (0.77, 0.37)])], glass),
        ("fill", [f.rect(0.0, 0.68, 1.0, 0.75)], body * 0.55),
        ("fill", [f.rect(0.955, 0.44, 1.0, 0.54)], _jitter(rng, (150, 235, 250), 8)),
        ("fill", [f.rect(0.0, 0.44, 0.04, 0.54)], _jitter(rng, (40, 40, 210), 8)),
        ("fill", [f.circle(0.22, wv, wheel_r), f.circle(0.78, wv, wheel_r)], _jitter(rng, (28, 28, 28), 5)),
        ("fill", [f.circle(0.22, wv, 0.5 * wheel_r), f.circle(0.78, wv, 0.5 * wheel_r)],
         _jitter(rng, (165, 165, 165), 10)),
    ]


_SKIN = ((120, 160, 220), (95, 135, 195), (70, 100, 150), (45, 65, 100))
_HAIR = ((20, 20, 25), (25, 45, 80), (70, 150, 200), (130, 130, 135))
_TROUSERS = ((90, 50, 25), (35, 35, 35), (40, 60, 90), (110, 110, 110), (130, 90, 50))


def _person(rng, w, h):
    """Standing figure: hair + skin head, vivid shirt with arms and hands, dark trousers, shoes."""
    f = _Frame(w, h)
    skin = _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 8)
    hair = _jitter(rng, _HAIR[rng.integers(len(_HAIR))], 8)
    shirt = _vivid(rng, s_lo=0.55, v_lo=0.5)
    trousers = _jitter(rng, _TROUSERS[rng.integers(len(_TROUSERS))], 10)
    head_r = min(0.095 * h, 0.3 * w)
    head_v = head_r / h
    arm_r = 0.07 * w
    return [
        ("fill", [f.rect(0.25, 0.56, 0.485, 0.97), f.rect(0.515, 0.56, 0.75, 0.97)], trousers),
        ("fill", [f.rect(0.22, 0.95, 0.485, 1.0), f.rect(0.515, 0.95, 0.78, 1.0)], _jitter(rng, (25, 25, 30), 5)),
        ("fill", [f.rounded_rect(0.0, 0.205, 0.17, 0.55, arm_r),
                  f.rounded_rect(0.83, 0.205, 1.0, 0.55, arm_r)], shirt * 0.8),
        ("fill", [f.circle(0.085, 0.56, 0.075 * w), f.circle(0.915, 0.56, 0.075 * w)], skin),
        ("fill", [f.rounded_rect(0.15, 0.195, 0.85, 0.6, 0.18 * w)], shirt),
        ("fill", [f.circle(0.5, head_v, head_r)], hair),
        ("fill", [f.circle(0.5, head_v + 0.25 * head_r / h, 0.85 * head_r)], skin),
    ]


def _sign(rng, w, h):
    """Red octagon with a white rim and a white bar (a no-entry / stop sign)."""
    f = _Frame(w, h)
    red = _jitter(rng, (40, 35, 205), 12)
    white = _jitter(rng, (235, 235, 235), 8)
    return [
        ("fill", [f.octagon(0.5 / math.cos(math.pi / 8), 0.5 / math.cos(math.pi / 8))], white),
        ("fill", [f.octagon(0.43 / math.cos(math.pi / 8), 0.43 / math.cos(math.pi / 8))], red),
        ("fill", [f.rect(0.2, 0.42, 0.8, 0.58)], white),
    ]


def _crate(rng, w, h):
    """Wooden crate: dark frame, lighter panel with grain lines, one diagonal brace."""
    f = _Frame(w, h)
    wood = _hsv(rng.uniform(0.06, 0.11), rng.uniform(0.45, 0.75), rng.uniform(0.55, 0.85))
    frame = wood * rng.uniform(0.5, 0.65)
    b = 0.13
    grain_w = max(1.0, 0.025 * min(w, h))
    grain = [f.pts([(b, v), (1 - b, v + rng.normal(0, 0.01))]) for v in (0.3, 0.45, 0.6, 0.75)]
    d = 0.09
    return [
        ("fill", [f.rect(0.0, 0.0, 1.0, 1.0)], frame),
        ("fill", [f.rect(b, b, 1 - b, 1 - b)], wood),
        ("line", grain, wood * 0.78, grain_w),
        ("fill", [f.pts([(b, b), (b + d, b), (1 - b, 1 - b - d), (1 - b, 1 - b), (1 - b - d, 1 - b),
                         (b, b + d)])], frame),
    ]


_BIRD_HUES = (0.6, 0.0, 0.15, 0.33, None)  # blue, red, yellow, green, or a dark/brown bird


def _bird(rng, w, h):
    """Bird in profile: tail, body with a pale belly, raised darker wing, round head, orange beak, eye."""
    f = _Frame(w, h)
    hue = _BIRD_HUES[rng.integers(len(_BIRD_HUES))]
    body = _vivid(rng, hue, s_lo=0.5, v_lo=0.45) if hue is not None else _muted(rng, 0.15, 0.45, 0.5)
    belly = _jitter(rng, (215, 225, 230), 10)
    beak = _jitter(rng, (20, 140, 250), 10)
    head_r = 0.16 * h
    return [
        ("fill", [f.pts([(0.0, 0.36), (0.25, 0.55), (0.0, 0.72)])], body * 0.7),
        ("fill", [f.ellipse(0.45, 0.6, 0.3, 0.28)], body),
        ("fill", [f.ellipse(0.5, 0.7, 0.2, 0.15)], belly),
        ("fill", [f.pts([(0.28, 0.55), (0.62, 0.48), (0.42, 0.0)])], body * 0.6),
        ("fill", [f.circle(0.75, 0.42, head_r)], body),
        ("fill", [f.pts([(0.86, 0.34), (1.0, 0.44), (0.86, 0.52)])], beak),
        ("fill", [f.circle(0.79, 0.38, 0.045 * h)], belly),
        ("fill", [f.circle(0.795, 0.38, 0.022 * h)], _jitter(rng, (15, 15, 15), 4)),
    ]


@dataclass(frozen=True)
class _ClassSpec:
    draw: object
    aspect: tuple  # (lo, hi) of width / height
    max_angle: float  # degrees, uniform in [-max, max]
    flips: bool


_SPECS = {
    "car": _ClassSpec(_car, (1.75, 2.3), 4.0, True),
    "person": _ClassSpec(_person, (0.34, 0.46), 4.0, True),
    "sign": _ClassSpec(_sign, (0.92, 1.08), 12.0, False),
    "crate": _ClassSpec(_crate, (0.8, 1.25), 22.0, False),
    "bird": _ClassSpec(_bird, (1.3, 1.7), 28.0, True),
}


# Distractors: partial shapes or wrong colour combinations of the classes; never annotated.
def _distractor(rng, w, h):
    f = _Frame(w, h)
    kind = rng.integers(5)
    if kind == 0:  # an octagon that is not red, without the bar
        c = _vivid(rng, rng.choice([0.33, 0.55, 0.62, 0.15]))
        return [("fill", [f.octagon(0.54, 0.54)], c), ("fill", [f.octagon(0.45, 0.45)], c * 0.7)]
    if kind == 1:  # a pair of wheels without a car
        r = 0.45 * h
        return [("fill", [f.circle(0.2, 0.5, r), f.circle(0.8, 0.5, r)], _jitter(rng, (28, 28, 28), 5)),
                ("fill", [f.circle(0.2, 0.5, r / 2), f.circle(0.8, 0.5, r / 2)], _jitter(rng, (160, 160, 160), 8))]
    if kind == 2:  # a hollow grey/blue frame (not a wooden crate)
        c = _hsv(rng.uniform(0.5, 0.7), rng.uniform(0.0, 0.5), rng.uniform(0.4, 0.8))
        lw = max(1.0, 0.12 * min(w, h))
        return [("line", [f.pts([(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)])], c, lw)]
    if kind == 3:  # a vivid ellipse (body without head or beak)
        return [("fill", [f.ellipse(0.5, 0.5, 0.5, 0.5)], _vivid(rng))]
    # a headless torso with legs
    return [("fill", [f.rect(0.25, 0.5, 0.48, 1.0), f.rect(0.52, 0.5, 0.75, 1.0)], _muted(rng, 0.1, 0.4)),
            ("fill", [f.rounded_rect(0.12, 0.0, 0.88, 0.55, 0.15 * w)], _vivid(rng))]


# --------------------------------------------------------------------------------------------------
# Rendering: supersampled polygon fill per object, block-averaged to premultiplied colour + coverage,
# composited over the image; an owner map records which object is on top at each pixel.
# --------------------------------------------------------------------------------------------------

_SHIFT = 4  # cv2 fixed-point fractional bits for sub-pixel vertices


@dataclass
class _Placed:
    label: int             # 0-based class index, or -1 for a distractor
    layers: list
    offsets: tuple         # (x0, y0, x1, y1) of the shape's extent relative to its centre
    size: float            # nominal sqrt(w * h), picks the supersampling factor
    cx: float = 0.0
    cy: float = 0.0

    def box(self) -> np.ndarray:
        x0, y0, x1, y1 = self.offsets
        return np.array([self.cx + x0, self.cy + y0, self.cx + x1, self.cy + y1])


def _transform_layers(layers, angle_deg: float, flip: bool):
    """Mirror/rotate every polygon about the centre; returns new layers and the fill extent."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    out, fills = [], []
    for layer in layers:
        polys = []
        for p in layer[1]:
            q = p.copy()
            if flip:
                q[:, 0] = -q[:, 0]
            q = q @ rot.T
            polys.append(q)
            if layer[0] == "fill":
                fills.append((q, 0.0))
            else:  # a stroke reaches half its width beyond its centre line
                fills.append((q, layer[3] / 2))
        out.append((layer[0], polys) + tuple(layer[2:]))
    ext = (min(float(q[:, 0].min()) - m for q, m in fills), min(float(q[:, 1].min()) - m for q, m in fills),
           max(float(q[:, 0].max()) + m for q, m in fills), max(float(q[:, 1].max()) + m for q, m in fills))
    return out, ext


def _make_object(rng, label: int, size: float, max_w: float, max_h: float) -> _Placed:
    spec = _SPECS[CLASSES[label]]
    aspect = rng.uniform(*spec.aspect)
    w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
    layers = spec.draw(rng, w, h)
    angle = rng.uniform(-spec.max_angle, spec.max_angle)
    layers, ext = _transform_layers(layers, angle, spec.flips and rng.random() < 0.5)
    # Shrink (exactly: every coordinate is linear in the size) so that the box fits the image and its
    # sqrt(area) stays within MAX_SIZE once rotation has grown it.
    bw, bh = ext[2] - ext[0], ext[3] - ext[1]
    k = min(1.0, max_w / bw, max_h / bh, MAX_SIZE / math.sqrt(bw * bh))
    if k < 1.0:
        layers = [(l[0], [p * k for p in l[1]], l[2]) + ((l[3] * k,) if l[0] == "line" else ())
                  for l in layers]
        ext = tuple(e * k for e in ext)
        w, h = w * k, h * k
    return _Placed(label, layers, ext, math.sqrt(w * h))


def _make_distractor(rng, size: float) -> _Placed:
    aspect = math.exp(rng.uniform(-0.7, 0.7))
    w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
    layers, ext = _transform_layers(_distractor(rng, w, h), rng.uniform(-30, 30), False)
    return _Placed(-1, layers, ext, size)


def _supersampling(size: float) -> int:
    return 4 if size < SMALL_MAX else (3 if size < MEDIUM_MAX else 2)


def _render(img: np.ndarray, owner: np.ndarray, obj: _Placed, obj_id: int):
    """Composite obj into img (uint8 BGR, in place); set owner where obj covers >= half a pixel.

    Returns (covered pixels inside the image, covered pixels in total), counting pixels with coverage
    >= 0.5 (the total includes the part beyond the image border)."""
    H, W = img.shape[:2]
    ss = _supersampling(obj.size)
    bx0, by0, bx1, by1 = obj.box()
    ox, oy = math.floor(bx0), math.floor(by0)
    pw, ph = math.ceil(bx1) - ox + 1, math.ceil(by1) - oy + 1
    canvas = np.zeros((ph * ss, pw * ss, 3), np.uint8)
    mask = np.zeros((ph * ss, pw * ss), np.uint8)
    scale = float(1 << _SHIFT)
    for layer in obj.layers:
        # cv2 puts pixel centres on integers: continuous x maps to x * ss - 0.5 in the canvas.
        pts = [np.round(((p + (obj.cx - ox, obj.cy - oy)) * ss - 0.5) * scale).astype(np.int32)
               for p in layer[1]]
        colour = tuple(float(c) for c in np.clip(layer[2], 0, 255))
        if layer[0] == "fill":
            cv2.fillPoly(canvas, pts, colour, cv2.LINE_8, _SHIFT)
            cv2.fillPoly(mask, pts, 255, cv2.LINE_8, _SHIFT)
        else:
            th = max(1, int(round(layer[3] * ss)))
            cv2.polylines(canvas, pts, False, colour, th, cv2.LINE_8, _SHIFT)
            cv2.polylines(mask, pts, False, 255, th, cv2.LINE_8, _SHIFT)
    # Block means: premultiplied colour and coverage at image resolution (exact integer sums).
    # The canvas is black wherever the mask is empty, so its block sums are already premultiplied.
    m = np.zeros((ph, pw), np.float32)
    col = np.zeros((ph, pw, 3), np.float32)
    for i in range(ss):
        for j in range(ss):
            m += mask[i::ss, j::ss]
            col += canvas[i::ss, j::ss]
    alpha = m * (1.0 / (255.0 * ss * ss))
    # Light from above: the top of an object is a little brighter than its bottom.
    rows = (np.arange(ph, dtype=np.float32) + (oy + 0.5 - by0)) / max(by1 - by0, 1.0)
    shade = (1.08 - 0.2 * np.clip(rows, 0.0, 1.0)) * (1.0 / (ss * ss))
    premult = col * shade[:, None, None]
    total = int(np.count_nonzero(alpha >= 0.5))
    # Clip the patch to the image.
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + pw, W), min(oy + ph, H)
    if x1 <= x0 or y1 <= y0:
        return 0, total
    a = alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    pm = premult[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    region = img[y0:y1, x0:x1]
    region[...] = np.clip(region * (1.0 - a[..., None]) + pm + 0.5, 0, 255).astype(np.uint8)
    on = a >= 0.5
    owner[y0:y1, x0:x1][on] = obj_id
    return int(np.count_nonzero(on)), total


# --------------------------------------------------------------------------------------------------
# Backgrounds: gradient, low-frequency blobs, stripes/grids, muted shapes, lines, fine texture.
# --------------------------------------------------------------------------------------------------

def _smooth_noise(rng, H, W, cell, channels):
    gh, gw = max(2, H // cell + 2), max(2, W // cell + 2)
    g = rng.standard_normal((gh, gw, channels)).astype(np.float32)
    up = cv2.resize(g, (W, H), interpolation=cv2.INTER_CUBIC)
    return up.reshape(H, W, channels)


def _background(rng, H, W) -> np.ndarray:
    yy = np.arange(H, dtype=np.float32)[:, None]
    xx = np.arange(W, dtype=np.float32)[None, :]
    theta = rng.uniform(0, 2 * np.pi)
    t = (xx * math.cos(theta) + yy * math.sin(theta))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c1, c2 = _muted(rng, 0.3, 0.85), _muted(rng, 0.2, 0.75)
    img = c1 + t[..., None] * (c2 - c1)
    # Low-frequency blobs: mostly brightness, a little colour.
    blobs = _smooth_noise(rng, H, W, int(rng.integers(30, 90)), 3) * np.float32(rng.uniform(3, 8))
    img += blobs + blobs[..., :1] * np.float32(rng.uniform(1.5, 3.0))
    if rng.random() < 0.5:  # stripes (fences, floors, facades) over the whole image or a band
        period = rng.uniform(6, 40)
        phi = rng.uniform(0, np.pi)
        s = np.sin(2 * np.pi * (xx * math.cos(phi) + yy * math.sin(phi)) / period)
        amp = np.float32(rng.uniform(6, 18))
        if rng.random() < 0.6:
            lo = rng.uniform(0, 0.6) * H
            amp = amp * ((yy >= lo) & (yy < lo + rng.uniform(0.15, 0.5) * H)).astype(np.float32)
        img += (s * amp)[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(4, 14))):  # muted blocks and blobs (buildings, bushes, puddles)
        c = tuple(float(v) for v in _muted(rng, 0.15, 0.9, 0.35))
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        if rng.random() < 0.5:
            w, h = rng.uniform(20, W / 2), rng.uniform(20, H / 2)
            cv2.rectangle(img, (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2)), c, -1)
        else:
            cv2.ellipse(img, (int(cx), int(cy)), (int(rng.uniform(10, W / 4)), int(rng.uniform(10, H / 4))),
                        float(rng.uniform(0, 180)), 0, 360, c, -1, cv2.LINE_AA)
    if rng.random() < 0.3:  # a window grid / tiled wall
        x0, y0 = int(rng.uniform(0, W / 2)), int(rng.uniform(0, H / 2))
        x1, y1 = int(x0 + rng.uniform(W / 4, W / 2)), int(y0 + rng.uniform(H / 4, H / 2))
        step = int(rng.integers(12, 40))
        c = tuple(float(v) for v in _muted(rng, 0.1, 0.6, 0.2))
        for x in range(x0, x1 + 1, step):
            cv2.line(img, (x, y0), (x, y1), c, 1 + int(rng.integers(3)))
        for y in range(y0, y1 + 1, step):
            cv2.line(img, (x0, y), (x1, y), c, 1 + int(rng.integers(3)))
    for _ in range(int(rng.integers(5, 25))):  # random lines (wires, road markings, cracks)
        c = tuple(float(v) for v in _muted(rng, 0.05, 0.95, 0.3))
        p0 = (int(rng.uniform(-50, W + 50)), int(rng.uniform(-50, H + 50)))
        p1 = (int(rng.uniform(-50, W + 50)), int(rng.uniform(-50, H + 50)))
        cv2.line(img, p0, p1, c, int(rng.integers(1, 5)), cv2.LINE_AA)
    fine = _smooth_noise(rng, H, W, int(rng.integers(3, 8)), 1) * rng.uniform(3, 9)
    return np.clip(img + fine, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------------------

def _log_uniform(rng, lo, hi):
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _overlaps_too_much(box, placed_boxes) -> bool:
    """True when box would hide more than MAX_COVER_BY_ONE of an already placed box (or vice versa for
    tiny objects landing on each other)."""
    if not placed_boxes:
        return False
    b = np.asarray(placed_boxes)
    iw = np.clip(np.minimum(b[:, 2], box[2]) - np.maximum(b[:, 0], box[0]), 0, None)
    ih = np.clip(np.minimum(b[:, 3], box[3]) - np.maximum(b[:, 1], box[1]), 0, None)
    inter = iw * ih
    area_old = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    area_new = (box[2] - box[0]) * (box[3] - box[1])
    return bool(np.any(inter > MAX_COVER_BY_ONE * area_old) or np.any(inter > 0.6 * area_new))


def _image_size(rng):
    w, h = int(rng.integers(560, 721)), int(rng.integers(400, 521))
    if rng.random() < 0.15:  # portrait
        w, h = h, w
    return w, h


# Cluster kinds: the dominant class and how members are laid out.
_CLUSTERS = (("person", "crowd"), ("car", "row"), ("crate", "grid"), ("bird", "crowd"), ("sign", "row"))


def _cluster_positions(rng, kind, n, base, W, H):
    """n centres around a random cluster centre: a crowd (Gaussian), a row (line) or a grid (shelf)."""
    margin = 2 * base + 10
    cx, cy = rng.uniform(margin, W - margin), rng.uniform(margin, H - margin)
    if kind == "row":
        ang = rng.normal(0, 0.15)
        step = base * rng.uniform(1.6, 2.4)
        k = np.arange(n) - (n - 1) / 2
        pos = np.stack([cx + k * step * math.cos(ang), cy + k * step * math.sin(ang)], axis=1)
        pos += rng.normal(0, 0.15 * base, pos.shape)
    elif kind == "grid":
        cols = max(1, int(math.ceil(math.sqrt(n * 1.5))))
        step = base * rng.uniform(1.3, 1.7)
        idx = np.arange(n)
        pos = np.stack([cx + (idx % cols - (cols - 1) / 2) * step,
                        cy + (idx // cols - (n // cols) / 2) * step], axis=1)
        pos += rng.normal(0, 0.1 * base, pos.shape)
    else:
        spread = max(12.0, base * math.sqrt(n) * rng.uniform(0.5, 0.8))
        pos = np.stack([rng.normal(cx, spread, n), rng.normal(cy, spread * rng.uniform(0.5, 1.0), n)], axis=1)
    return pos


def _inside(box, W, H) -> bool:
    return box[0] >= 0 and box[1] >= 0 and box[2] <= W and box[3] <= H


def generate_image(seed: int, index: int):
    """Draw image `index` of the dataset with `seed`.

    Returns (image HxWx3 uint8 BGR, boxes (K,4) float64 [x1,y1,x2,y2] clipped to the image,
    labels (K,) int64 0-based indices into CLASSES). Depends only on (seed, index)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    W, H = _image_size(rng)
    img = _background(rng, H, W)
    owner = np.zeros((H, W), np.int32)  # 0 = background/distractor, i + 1 = object i
    max_w, max_h = 0.95 * W, 0.95 * H

    n = int(rng.integers(5, 26))
    size_class = rng.choice(3, size=n, p=SIZE_CLASS_PROBS)
    n_small = int(np.sum(size_class == 0))

    placed: list[_Placed] = []
    boxes: list[np.ndarray] = []

    def try_place(obj: _Placed, centres, must_be_inside: bool) -> bool:
        for cx, cy in centres:
            obj.cx, obj.cy = float(cx), float(cy)
            box = obj.box()
            if must_be_inside and not _inside(box, W, H):
                continue
            if _overlaps_too_much(box, boxes):
                continue
            placed.append(obj)
            boxes.append(box)
            return True
        return False

    def random_centres(k):
        return zip(rng.uniform(-0.05 * W, 1.05 * W, k), rng.uniform(-0.05 * H, 1.05 * H, k))

    # Large then medium objects, at the back, anywhere (they may be cut by the border).
    for sc, lo, hi in ((2, MEDIUM_MAX, MAX_SIZE), (1, SMALL_MAX, MEDIUM_MAX)):
        for _ in range(int(np.sum(size_class == sc))):
            obj = _make_object(rng, int(rng.integers(len(CLASSES))), _log_uniform(rng, lo, hi), max_w, max_h)
            try_place(obj, random_centres(12), must_be_inside=False)

    # Small objects: most in 1-3 clusters with a dominant class and similar sizes, the rest scattered.
    cluster_spots = []
    if n_small:
        n_clusters = min(int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25])), max(1, n_small // 2))
        in_cluster = rng.random(n_small) < 0.85
        member = rng.integers(n_clusters, size=n_small)
        for c in range(n_clusters):
            ids = np.flatnonzero(in_cluster & (member == c))
            if ids.size == 0:
                continue
            dom, layout = _CLUSTERS[rng.integers(len(_CLUSTERS))]
            base = _log_uniform(rng, 8.0, 26.0)
            centres = _cluster_positions(rng, layout, ids.size, base, W, H)
            cluster_spots.append((centres, base))
            for (cx, cy) in centres:
                label = CLASSES.index(dom) if rng.random() < 0.7 else int(rng.integers(len(CLASSES)))
                size = float(np.clip(base * math.exp(rng.normal(0, 0.2)), MIN_SIZE, SMALL_MAX - 1))
                obj = _make_object(rng, label, size, max_w, max_h)
                jitter = rng.normal(0, 0.5 * size, (6, 2))
                try_place(obj, [(cx, cy)] + [(cx + dx, cy + dy) for dx, dy in jitter], must_be_inside=True)
        for _ in range(int(np.sum(~in_cluster))):
            obj = _make_object(rng, int(rng.integers(len(CLASSES))), _log_uniform(rng, MIN_SIZE, SMALL_MAX),
                               max_w, max_h)
            try_place(obj, zip(rng.uniform(0, W, 8), rng.uniform(0, H, 8)), must_be_inside=True)

    # Distractors first (behind every object), then objects in placement order: big at the back.
    for _ in range(int(rng.integers(0, 4))):
        d = _make_distractor(rng, _log_uniform(rng, 8.0, 120.0))
        d.cx, d.cy = rng.uniform(0, W), rng.uniform(0, H)
        _render(img, owner, d, 0)
    for centres, base in cluster_spots:  # now and then a small look-alike among a cluster's members
        if rng.random() < 0.35:
            d = _make_distractor(rng, base * math.exp(rng.normal(0, 0.2)))
            cx, cy = centres[rng.integers(len(centres))]
            d.cx, d.cy = cx + rng.normal(0, 2 * base), cy + rng.normal(0, 2 * base)
            _render(img, owner, d, 0)
    counts = []
    for i, obj in enumerate(placed):
        counts.append(_render(img, owner, obj, i + 1))
    visible = np.bincount(owner.ravel(), minlength=len(placed) + 1)[1:]

    out_boxes, out_labels = [], []
    for i, obj in enumerate(placed):
        in_image, total = counts[i]
        if total == 0 or in_image < MIN_VISIBLE_IN_IMAGE * total:
            continue  # mostly outside the image
        if in_image == 0 or visible[i] < MIN_VISIBLE_UNOCCLUDED * in_image:
            continue  # mostly hidden behind later objects
        b = obj.box()
        b = np.array([max(b[0], 0.0), max(b[1], 0.0), min(b[2], float(W)), min(b[3], float(H))])
        if b[2] - b[0] < 1.0 or b[3] - b[1] < 1.0:
            continue
        out_boxes.append(b)
        out_labels.append(obj.label)

    # Camera: global gain/offset and sensor noise.
    gain, bias = rng.uniform(0.85, 1.12), rng.uniform(-12, 12)
    noise = rng.standard_normal((H, W, 3), dtype=np.float32) * rng.uniform(1.5, 4.5)
    img = np.clip(img.astype(np.float32) * gain + bias + noise + 0.5, 0, 255).astype(np.uint8)
    return (img, np.array(out_boxes, np.float64).reshape(-1, 4), np.array(out_labels, np.int64))


# --------------------------------------------------------------------------------------------------
# Writing a split
# --------------------------------------------------------------------------------------------------

def _file_name(index: int) -> str:
    return f"{index:06d}.jpg"


def _encode(seed: int, index: int):
    img, boxes, labels = generate_image(seed, index)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for image {index}")
    return index, img.shape[1], img.shape[0], buf.tobytes(), boxes, labels


def _info(split: str, seed: int, count: int) -> dict:
    return {"description": "autofocus-trt synthetic small-object dataset", "generator_version": GENERATOR_VERSION,
            "split": split, "seed": int(seed), "count": int(count)}


def generate_split(out_dir, seed: int, count: int, split: str = "custom", workers: int = 1) -> Path:
    """Write out_dir/images/*.jpg and out_dir/annotations.json; returns the annotations path.

    The annotations file is written last (atomically), so its presence marks a complete split."""
    if not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_path = out / "annotations.json"
    if ann_path.exists():
        ann_path.unlink()

    if workers > 1 and count > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.imap(_encode_star, [(seed, i) for i in range(count)], chunksize=8)
            records = _write_images(results, images_dir)
    else:
        records = _write_images((_encode(seed, i) for i in range(count)), images_dir)

    coco = {"info": _info(split, seed, count), "images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(CLASSES)]}
    ann_id = 1
    for index, width, height, boxes, labels in records:
        coco["images"].append({"id": index + 1, "file_name": _file_name(index), "width": width, "height": height})
        for b, lab in zip(boxes, labels):
            x, y, w, h = (round(float(b[0]), 2), round(float(b[1]), 2),
                          round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2))
            coco["annotations"].append({"id": ann_id, "image_id": index + 1, "category_id": int(lab) + 1,
                                        "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0})
            ann_id += 1
    tmp = ann_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco, separators=(",", ":")))
    os.replace(tmp, ann_path)
    return ann_path


def _encode_star(args):
    return _encode(*args)


def _write_images(results, images_dir: Path):
    records = []
    for index, width, height, data, boxes, labels in results:
        (images_dir / _file_name(index)).write_bytes(data)
        records.append((index, width, height, boxes, labels))
    return records


def default_dir(split: str) -> Path:
    return REPO_ROOT / "data" / split


def _is_complete(out: Path, split: str, seed: int, count: int) -> bool:
    ann_path = out / "annotations.json"
    if not ann_path.is_file():
        return False
    try:
        coco = json.loads(ann_path.read_text())
    except (OSError, ValueError):
        return False
    if coco.get("info") != _info(split, seed, count) or len(coco.get("images", ())) != count:
        return False
    return all((out / "images" / im["file_name"]).is_file() for im in coco["images"])


def ensure_split(split: str, out_dir=None) -> Path:
    """Generate the default `split` ("train" or "val") into out_dir (default <repo>/data/<split>) unless a
    complete copy written by this generator version is already there. Returns the split folder
    (annotations at <folder>/annotations.json, images under <folder>/images). Safe to call from several
    processes at once (a file lock serialises generation)."""
    if split not in DEFAULT_SPLITS:
        raise ValueError(f"split must be one of {sorted(DEFAULT_SPLITS)}, got {split!r}")
    seed, count = DEFAULT_SPLITS[split]
    out = Path(out_dir) if out_dir is not None else default_dir(split)
    if _is_complete(out, split, seed, count):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_complete(out, split, seed, count):  # another process may have finished meanwhile
            if (out / "images").exists():
                shutil.rmtree(out / "images")
            generate_split(out, seed, count, split=split, workers=min(2, os.cpu_count() or 1))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m model.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=sorted(DEFAULT_SPLITS), required=True)
    p.add_argument("--seed", type=int, default=None, help="default: train 0, val 2026, tune 77, test 9001")
    p.add_argument("--count", type=int, default=None, help="default: train 2000, val 300, tune 200, test 1000")
    p.add_argument("--out", type=Path, default=None, help="default: <repo>/data/<split>")
    p.add_argument("--workers", type=int, default=1, help="processes (the output does not depend on it)")
    args = p.parse_args(argv)
    seed = DEFAULT_SPLITS[args.split][0] if args.seed is None else args.seed
    count = DEFAULT_SPLITS[args.split][1] if args.count is None else args.count
    if seed < 0 or count < 0:
        p.error("--seed and --count must be non-negative")
    out = args.out if args.out is not None else default_dir(args.split)
    if (out / "images").exists():
        shutil.rmtree(out / "images")  # stale images of a larger run must not linger
    ann = generate_split(out, seed, count, split=args.split, workers=max(1, args.workers))
    n_ann = len(json.loads(ann.read_text())["annotations"])
    print(f"wrote {count} images and {n_ann} boxes to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
