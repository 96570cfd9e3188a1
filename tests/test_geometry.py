"""The one resize rule (runtime/geometry.py, docs/design.md "Resize rule"): the runtime (the cascade's
regions and what ops.crop_resize makes), the training code (model.train.detect_resized), the evaluator
(model.evaluate.ScaleRunner) and the bucket fitter (export.buckets.cascade_input_sizes) give a whole
image the same resized size, floor(side * factor + 1/2), on a grid of sizes and factors that holds many
exact .5 ties; each is compared with an exact rational (fractions.Fraction) half-up reference."""
import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import torch

from export.buckets import cascade_input_sizes
from model import train
from model.config import load_config
from model.evaluate import ScaleRunner
from runtime import cascade, geometry, ops

CONFIG = load_config("model/configs/default.json")
BIG = 10 ** 6  # a max_side that never binds


def reference_factor(h: int, w: int, scale) -> Fraction:
    """docs/design.md's factor, exactly: min(min_side / short side, max_side / long side)."""
    lo, hi = (Fraction(v) for v in scale)
    return min(lo / min(h, w), hi / max(h, w))


def reference_size(side: int, factor: Fraction) -> int:
    """Half up, exactly: floor(side * factor + 1/2)."""
    return math.floor(side * factor + Fraction(1, 2))


def tie_grid():
    """Factors k / 8 (the scale's min_side is short side * k / 8, so the factor is exact): a side times
    k / 8 ends in .5 whenever side * k = 4 (mod 8)."""
    for h in (1, 3, 5, 7, 9, 11, 13, 21, 27, 45):
        for w in (h, h + 1, h + 3, 2 * h + 5):
            for k in range(1, 21):
                yield h, w, (Fraction(h * k, 8), BIG)


def scale_grid():
    """The shipped scales and others on image sizes of the synthetic data's range and a few odd ones."""
    for h, w in ((400, 560), (401, 563), (433, 719), (520, 720), (607, 455), (37, 53), (1000, 333)):
        for scale in ((480, 512), (800, 1280), (1400, 2000), (600, 1000), (-1, 512)):
            yield h, w, scale


GRID = list(tie_grid()) + list(scale_grid())


def _cases():
    out = []
    for h, w, scale in GRID:
        f = reference_factor(h, w, scale) if scale[0] > 0 else Fraction(scale[1]) / max(h, w)
        want = (reference_size(h, f), reference_size(w, f))
        if min(want) >= 1:  # a region that resizes to nothing is dropped by the cascade
            out.append((h, w, tuple(float(v) for v in scale), want))
    return out


CASES = _cases()


def test_the_grid_holds_ties_where_round_half_even_differs():
    """The grid can tell half up from Python's round (half to even), the rule the model and export code
    used before."""
    ties = [(h, w, s) for h, w, s, want in CASES
            if (h * reference_factor(h, w, s)).denominator == 2 or (w * reference_factor(h, w, s)).denominator == 2]
    differs = [1 for h, w, s, want in CASES
               if s[0] > 0 and (round(h * (s[0] / min(h, w))), round(w * (s[0] / min(h, w)))) != want
               and s[1] == BIG]
    assert len(ties) > 100 and len(differs) > 50


def test_geometry_resized_image_size():
    for h, w, scale, want in CASES:
        f = geometry.scale_factor(h, w, scale)
        assert geometry.resized_image_size(h, w, f) == want, (h, w, scale)


def _white(h, w):
    return np.full((h, w, 3), 255, np.uint8)


def test_runtime_regions_and_crop_resize():
    for h, w, scale, want in CASES:
        ctx = SimpleNamespace(images=[np.zeros((h, w, 3), np.uint8)], params=SimpleNamespace(scales=[scale]))
        region = cascade.whole_image_regions(ctx, 0)[0]
        assert region.size == want, (h, w, scale)
        # What crop_resize itself makes: the rows and columns it fills (white image, mean 0, std 1: 1.0)
        # in a slot one pixel larger than the reference size.
        out = ops.crop_resize(_white(h, w), np.array([[0, 0, w, h]], np.float32), np.float32(region.factor),
                              (want[0] + 1, want[1] + 1), (0, 0, 0), (1, 1, 1))[0, 0]
        assert (int((out > 0.5).any(1).sum()), int((out > 0.5).any(0).sum())) == want, (h, w, scale)


class _Recorder(torch.nn.Module):
    """Stands in for the network (its sizes are what is tested): records its input, returns empty maps."""

    def forward(self, x, export=True):
        self.input = x
        n, _, ph, pw = x.shape
        return {"scores": torch.zeros((n, 3, ph // 8, pw // 8)), "ltrb": torch.zeros((n, 4, ph // 8, pw // 8)),
                "focus": torch.zeros((n, 2, ph // 16, pw // 16))}


def test_training_code_detect_resized():
    net = _Recorder()
    for h, w, scale, want in CASES:
        train.detect_resized(net, _white(h, w), geometry.scale_factor(h, w, scale), CONFIG)
        x = net.input[0].numpy()
        filled = (int((x != 0).any((0, 2)).sum()), int((x != 0).any((0, 1)).sum()))  # zeroed past the size
        assert filled == want, (h, w, scale)


def test_evaluator_scale_runner():
    runner = ScaleRunner(_Recorder(), CONFIG)
    for h, w, scale, want in CASES:
        assert runner(_white(h, w), scale)["input_hw"] == want, (h, w, scale)


def test_bucket_fitter():
    for h, w, scale, want in CASES:
        if scale[0] > 0:  # (the fitter takes inference scales only)
            assert cascade_input_sizes((h, w), [], scales=[scale])[0] == want, (h, w, scale)
