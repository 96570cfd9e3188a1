"""export.buckets: coverage of every chip the scales can produce, smallest-bucket choice, waste."""
import math

import numpy as np
import pytest

from export.buckets import (MAX_BUCKETS, assign_bucket, cascade_input_sizes,
                            default_buckets, make_buckets, max_batch_per_bucket, padding_waste)

# docs/design.md, restated independently of the module: scales and min chip sizes (px at the coarser scale).
SCALES = [(480, 512), (800, 1280), (1400, 2000)]
MIN_CHIP_PX = [16 * 16, 20 * 16]


def factor(h, w, lo, hi):
    return min(lo / min(h, w), hi / max(h, w))


def synth_image_sizes():
    sizes = [(h, w) for w in range(560, 721, 20) for h in range(400, 521, 20)]
    return sizes + [(w, h) for h, w in sizes]  # portrait


def producible_sizes():
    """Whole image at every scale, and chips from the minimum chip to the whole image at scales 2, 3."""
    out = []
    for h, w in synth_image_sizes():
        f = [factor(h, w, *s) for s in SCALES]
        for s in range(3):
            full_h, full_w = round(h * f[s]), round(w * f[s])
            out.append((full_h, full_w))
            if s == 0:
                continue
            k = MIN_CHIP_PX[s - 1]
            min_h = min(k, round(h * f[s - 1])) / f[s - 1] * f[s]
            min_w = min(k, round(w * f[s - 1])) / f[s - 1] * f[s]
            for ch in np.linspace(math.floor(min_h), full_h, 7):
                for cw in np.linspace(math.floor(min_w), full_w, 7):
                    out.append((int(math.ceil(ch)), int(math.ceil(cw))))
    return out


def brute_smallest(h, w, buckets):
    fits = [(bh * bw, i) for i, (bh, bw) in enumerate(buckets) if bh >= h and bw >= w]
    return min(fits)[1] if fits else None


@pytest.mark.parametrize("buckets", [default_buckets(), make_buckets()], ids=["default", "rules"])
def test_every_producible_chip_fits(buckets):
    assert 1 <= len(buckets) <= MAX_BUCKETS
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in buckets)
    for h, w in producible_sizes():
        i = assign_bucket(h, w, buckets)
        assert i == brute_smallest(h, w, buckets), (h, w)
        assert buckets[i][0] >= h and buckets[i][1] >= w


def test_any_image_at_any_scale_fits():
    # Extreme aspect ratios too: resizing bounds the short side by min_side and the long by max_side.
    buckets = default_buckets()
    for h, w in [(100, 3000), (3000, 100), (1000, 1000), (37, 53), (4000, 3000)]:
        for lo, hi in SCALES:
            f = factor(h, w, lo, hi)
            assign_bucket(round(h * f), round(w * f), buckets)


def test_a_coarse_scale_is_covered_too():
    """AutoFocus's coarse_scale (runtime/params.py) runs whole images at its own size: the buckets hold
    them as they hold every scale's. Larger than any scale here, so that only its own buckets hold it."""
    coarse = (1500, 2200)
    buckets = default_buckets(coarse_scale=coarse)
    assert 1 <= len(buckets) <= MAX_BUCKETS
    for h, w in synth_image_sizes() + [(100, 3000), (3000, 100), (1000, 1000)]:
        f = factor(h, w, *coarse)
        i = assign_bucket(round(h * f), round(w * f), buckets)
        assert buckets[i][0] >= round(h * f) and buckets[i][1] >= round(w * f)
    for h, w in producible_sizes():  # and still every chip of the scales
        assign_bucket(h, w, buckets)


def test_assign_bucket_picks_smallest_area():
    buckets = [(1024, 1024), (512, 512), (256, 960), (512, 768), (256, 1024)]
    assert assign_bucket(200, 300, buckets) == 2      # 256x960 (246k px) < 512x512 (262k px)
    assert assign_bucket(200, 1000, buckets) == 4     # only 256x1024 and 1024x1024 hold it
    assert assign_bucket(256, 256, buckets) == 2
    assert assign_bucket(300, 300, buckets) == 1
    assert assign_bucket(512, 600, buckets) == 3
    assert assign_bucket(600, 100, buckets) == 0
    assert assign_bucket(100, 100, [(512, 512), (256, 1024)]) == 0  # equal areas: the first listed
    with pytest.raises(ValueError, match="2000x10 .*fits no bucket"):
        assign_bucket(2000, 10, buckets)
    with pytest.raises(ValueError, match="height, width"):
        assign_bucket(0, 10, buckets)


def test_padding_waste_hand_case():
    buckets = [(128, 128), (512, 512)]
    sizes = [(100, 100), (500, 400), (128, 128)]
    expected = (128 * 128 + 512 * 512 + 128 * 128) / (100 * 100 + 500 * 400 + 128 * 128)
    assert padding_waste(sizes, buckets) == pytest.approx(expected, rel=1e-12)
    assert padding_waste([], buckets) == 1.0
    with pytest.raises(ValueError, match="fits no bucket"):
        padding_waste([(600, 10)], buckets)


def test_make_buckets_deterministic_and_bounded():
    a, b = make_buckets(), make_buckets()
    assert a == b
    assert make_buckets(max_buckets=8) != a and len(make_buckets(max_buckets=8)) <= 8
    with pytest.raises(ValueError, match="max_buckets"):
        make_buckets(max_buckets=3)
    # A sample of one size: the greedy pick is exactly its 64-rounded size.
    assert (576, 576) in make_buckets(sizes=[(530, 530)] * 10)


def test_default_waste_on_producible_chips_is_bounded():
    # Not the realistic figure (see the report), a regression guard on the uniform grid.
    assert padding_waste(producible_sizes(), default_buckets()) < 1.7


def test_max_batch_per_bucket():
    assert max_batch_per_bucket([(512, 512), (1024, 1024), (2048, 2048), (256, 256)], 8) == [8, 2, 1, 8]
    with pytest.raises(ValueError, match="max_batch"):
        max_batch_per_bucket([(512, 512)], 0)


def test_cascade_input_sizes_hand_case():
    # A 640x480 image with one 20x20 px object in the middle (small at scales 1 and 2).
    # Scale factors: 0.8, 1.6667 (800/480), 2.9167 (1400/480). Scale 1: 384x512 whole image.
    # Chip 2: 16 cells * 16 px = 256 px at scale 1 = 320 px original -> 533 px at scale 2.
    # Chip 3: 20 cells * 16 px = 320 px at scale 2 = 192 px original -> 560 px at scale 3.
    # Worked with the paper's k = 16 and 20 (docs/design.md), passed explicitly.
    paper = ({"threshold": 0.02, "dilation": 3, "min_size": 16}, {"threshold": 0.2, "dilation": 3, "min_size": 20})
    sizes = cascade_input_sizes((480, 640), [(310, 230, 330, 250)], chip_params=paper)
    assert sizes == [(384, 512), (533, 533), (560, 560)]
    # No small object: only the whole image at scale 1 runs.
    assert cascade_input_sizes((480, 640), [(100, 100, 400, 400)]) == [(384, 512)]
    assert cascade_input_sizes((480, 640), []) == [(384, 512)]
