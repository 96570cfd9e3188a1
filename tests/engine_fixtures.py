"""A small random-weight bundle shared by the engine, cascade and backend tests.

Built once per test session (export.build_engine.build_bundle(random_init=True)) under pytest's base
temporary folder, with small buckets and test scales so the whole cascade runs in milliseconds on the
CPU. The scales, valid ranges and chip parameters are then written into bundle.json with
runtime.bundle.write_bundle (the bundle's own writer), so the bundle itself carries them.
"""
from __future__ import annotations

import math

import numpy as np

# Whole images of the synthetic set (~420 x 700) become ~77 x 128, ~155 x 256, ~232 x 384 inputs.
TEST_SCALES = [[96, 128], [160, 256], [256, 384]]
# The random network's boxes measure ~20 input pixels: ~110, ~55, ~36 original pixels at scales 1-3.
TEST_VALID_RANGES = [[80, None], [40, 120], [0, 60]]
TEST_CHIP_PARAMS = [{"threshold": 0.02, "dilation": 3, "min_size": 3},
                    {"threshold": 0.2, "dilation": 3, "min_size": 4}]
# packing="canvas": per chip scale its whole image's two shapes (buckets below)
TEST_CANVASES = {"gutter": 32, "shapes": [[], [[160, 256], [256, 160]], [[256, 384], [384, 256]]]}
TEST_BUCKETS = [(64, 64), (96, 128), (128, 96), (128, 128), (192, 192), (160, 256), (256, 160), (256, 256),
                (256, 384), (384, 256),
                # Never used by the tests: build_bundle checks the buckets against the default scales.
                (512, 512), (800, 1280), (1280, 800), (1408, 2016), (2016, 1408)]
SEED = 0


def build_test_bundle(folder):
    """Builds (or reuses) the random test bundle in `folder`; returns the loaded Bundle."""
    from runtime.bundle import load_bundle, write_bundle
    if (folder / "bundle.json").is_file():
        return load_bundle(folder)
    from export.build_engine import build_bundle
    bundle = build_bundle(random_init=True, seed=SEED, out=folder, buckets=TEST_BUCKETS, max_batch=2,
                          parity_shapes=((1, 3, 64, 96), (2, 3, 96, 64)), log=lambda *a: None)
    fields = {k: v for k, v in bundle.to_dict().items()
              if k not in ("classes", "buckets", "max_batch", "precision", "artefacts")}
    fields.update(scales=TEST_SCALES, valid_ranges=TEST_VALID_RANGES, chip_params=TEST_CHIP_PARAMS,
                  canvases=TEST_CANVASES)
    write_bundle(folder, classes=bundle.classes, buckets=bundle.buckets, max_batch=bundle.max_batch,
                 precision=bundle.precision, **fields)
    return load_bundle(folder)


def shared_bundle(tmp_path_factory):
    """The session's test bundle (one build for all modules that ask for it)."""
    return build_test_bundle(tmp_path_factory.getbasetemp() / "random_bundle")


def val_images(count: int, seed: int = 2026):
    """(image, boxes, labels) of generated validation images (model.synth)."""
    from model.synth import generate_image
    return [generate_image(seed, i) for i in range(count)]


def scale_factor(h, w, scale):
    """docs/design.md's resize factor, written out independently of the runtime."""
    return min(scale[0] / min(h, w), scale[1] / max(h, w))


def resized(h, w, f):
    """ops.crop_resize's output size: floor(side * f + 0.5) in float32."""
    f32 = np.float32(f)
    return int(np.floor(np.float32(h) * f32 + np.float32(0.5))), int(np.floor(np.float32(w) * f32 + np.float32(0.5)))


def ceil_to(v, d):
    return int(math.ceil(v / d) * d)
