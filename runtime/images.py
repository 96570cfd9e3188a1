"""Images into the engine: a file path or an array, checked and converted to HxWx3 uint8 BGR.

Accepted: HxWx3 uint8 BGR (OpenCV order); HxW or HxWx1 grayscale (replicated to 3 channels); HxWx4
BGRA (alpha dropped); uint16 (any of those layouts, or a 16-bit PNG/TIFF file) scaled to 8 bits by
value / 257, rounded (so 65535 -> 255). Other dtypes (float, int32, ...) raise TypeError: the network's
normalisation assumes 8-bit pixels and guessing a float range would silently change the answer.
Images larger than MAX_SIDE on a side are refused (a resize of such an image would still need its
full-resolution buffer, and one mistyped shape should not exhaust memory).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MAX_SIDE = 20_000
# Longest / shortest side beyond which an image is padded (bottom or right, with the normalisation's
# mean colour, so coordinates do not change): at (480, 512) a 1 x 600 strip would otherwise resize to
# less than one pixel across, and a network input needs a full 32 x 32 cell to see anything.
MAX_ASPECT = 16


def load_image(image, name: str = "image") -> np.ndarray:
    """A path (str / os.PathLike) or an array -> C-contiguous HxWx3 uint8 BGR. Errors name `name`."""
    if isinstance(image, (str, os.PathLike)):
        return _checked(_read(Path(image)), str(image))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a file path or an HxWx3 uint8 NumPy array, got {type(image).__name__}")
    return _checked(image, name)


def pad_extreme_aspect(image: np.ndarray, fill_bgr) -> np.ndarray:
    """image, or a copy padded at the bottom/right so that long side <= MAX_ASPECT * short side."""
    h, w = image.shape[:2]
    if max(h, w) <= MAX_ASPECT * min(h, w):
        return image
    out = np.empty((max(h, -(-w // MAX_ASPECT)), max(w, -(-h // MAX_ASPECT)), 3), np.uint8)
    out[:] = np.asarray(fill_bgr, np.uint8)
    out[:h, :w] = image
    return out


def _read(path: Path) -> np.ndarray:
    import cv2
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    data = np.frombuffer(path.read_bytes(), np.uint8)
    # Any depth (16-bit kept, then scaled), any colour layout (gray kept, alpha dropped); EXIF orientation
    # applied, as model.data.read_image (IMREAD_COLOR) does, so boxes refer to the same pixels.
    image = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    if image is None:
        raise ValueError(f"{path}: not a readable image (corrupt, empty or unsupported format)")
    return image


def _checked(image: np.ndarray, name: str) -> np.ndarray:
    if image.dtype == np.uint16:
        image = ((image.astype(np.float32) / 257.0) + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise TypeError(f"{name}: expected dtype uint8 (or uint16, scaled to 8 bits), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # BGRA -> BGR: alpha dropped, colour kept as stored
    elif image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"{name}: empty image (shape {image.shape})")
    if max(h, w) > MAX_SIDE:
        raise ValueError(f"{name}: {h} x {w} pixels exceeds the largest supported side of {MAX_SIDE} px; "
                         "downscale it first")
    return np.ascontiguousarray(image)
