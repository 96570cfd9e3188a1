"""The cascade's host work per engine call does not grow with its chips (issue 20, item 3).

The shipped network (model/checkpoints/default.pt, loaded as torch) runs the cascade on two synthetic
scenes built from the same pasted object: one copy (1 chip a scale) and 30 copies far apart (~30 chips a
scale). For each call we count, outside the network and outside the ops' own bodies:
  - ops: calls of runtime.ops' public functions, and calls into the extension runtime._C;
  - host reads: tensor -> host conversions (item, tolist, cpu, numpy, __bool__/__int__/__float__/
    __index__, np.asarray), seen through a torch TorchFunctionMode;
  - torch calls: every other torch operation the cascade dispatches (a per-chip slice or paste shows here).
Each must stay within 10% between the two scenes: the bookkeeping is tensor work or one call per scale.
Run as a script to print the counts.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from runtime import cascade, ops
from runtime.bundle import Bundle
from runtime.params import bundle_values, resolve
from runtime.stats import RunStats

HOST_READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "__array__"}
# The policies that matter: the CUDA one emulated on the CPU, and the CPU default.
# "cpu": the CPU default's padding and packing with batches not split at a bucket's max batch (there
# each split is one more network call, and its decode, for the same per-call work: the count follows the
# network calls, which test_engine and fps count, not the chips).
POLICIES = {"cuda": {"padding": "shared", "max_batch": 16, "packing": "canvas"},
            "cpu": {"padding": "divisor", "packing": "none", "max_batch": 64}}
# Thresholds in the shipped model's range (its defaults, model/configs/default.json, are t1 0.8 and t2 0.99),
# with dilation 1 and min_size 3 cells at scale 1 (not 3 and 7): a larger chip there
# spans the scene's object spacing, neighbouring chips overlap and merge_chips joins them into rows. Each
# copy must give a chip of the same shape (the scenes test checks it): at scale-1 threshold 0.2 the shipped
# map lights a region around a copy whose size depends on where it falls on the stride grid, and chips of
# several shapes cost one crop (and on the CPU one batch) per shape, which is not what is measured here.
CHIP_PARAMS = [{"threshold": 0.8, "dilation": 1, "min_size": 3},
               {"threshold": 0.98, "dilation": 3, "min_size": 8, "box_score": 0.5}]


class Counter(TorchFunctionMode):
    """Counts the torch operations and host reads dispatched while `depth` is 0 (the cascade's own code:
    the ops' bodies and the network raise depth while they run)."""

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.counts = {"ops": 0, "extension": 0, "host_reads": 0, "torch": 0}
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 0:
            name = getattr(func, "__name__", str(func))
            if name in HOST_READS:
                self.counts["host_reads"] += 1
                self.reads.append(name)
            else:
                self.counts["torch"] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def hidden(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


@contextlib.contextmanager
def instrumented(counter: Counter):
    """runtime.ops' public functions and runtime._C's functions wrapped to count their calls (and to hide
    their bodies from the torch count), restored on exit."""
    saved = []

    def wrap(owner, name, key):
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            if counter.depth == 0 or key == "extension":
                counter.counts[key] += 1
            with counter.hidden():
                return fn(*args, **kwargs)
        saved.append((owner, name, fn))
        setattr(owner, name, counted)

    for name in ops.__all__:
        if name not in ("deferred_checks", "trusted_values", "with_cuda"):
            wrap(ops, name, "ops")
    for name in dir(ops._C):
        if not name.startswith("_") and callable(getattr(ops._C, name)):
            wrap(ops._C, name, "extension")
    try:
        with counter:
            yield
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


# ------------------------------------------------------------------------------------ the set-up

@functools.lru_cache(maxsize=1)
def shipped():
    """(network callable, Bundle) of the shipped checkpoint: its cascade parameters, the default buckets
    and canvases of its scales, no artefacts (the network runs as torch here)."""
    from export import buckets as bucket_rules
    from export.build_engine import cascade_parameters, load_network
    from runtime.packing import DEFAULT_GUTTER, default_canvases
    model, config = load_network()
    params = cascade_parameters(config)
    bucket_list = bucket_rules.default_buckets(params["scales"], params["chip_params"])
    bundle = Bundle(classes=list(config["classes"]), buckets=[list(b) for b in bucket_list],
                    max_batch=bucket_rules.max_batch_per_bucket(bucket_list, 8),
                    canvases={"gutter": DEFAULT_GUTTER, "shapes": default_canvases(params["scales"])}, **params)

    @torch.no_grad()
    def network(batch):
        return model(batch)
    return network, bundle


@functools.lru_cache(maxsize=1)
def _object():
    """A small object of the synthetic set (a crop of generated image 0 around one ~16-28 px object)."""
    from model.synth import generate_image
    for index in range(20):
        image, boxes, _ = generate_image(7, index)
        for x1, y1, x2, y2 in boxes:
            if 16 <= x2 - x1 <= 28 and 16 <= y2 - y1 <= 28:
                x1, y1, x2, y2 = (int(v) for v in (x1 - 3, y1 - 3, x2 + 3, y2 + 3))
                if x1 >= 0 and y1 >= 0 and x2 <= image.shape[1] and y2 <= image.shape[0]:
                    return image[y1:y2, x1:x2].copy()
    raise AssertionError("no small object in the synthetic set")


def scene(copies: int, height: int = 1280, width: int = 1280) -> np.ndarray:
    """A plain grey image with `copies` of one object on a 6 x 5 grid of cells (one at the centre)."""
    obj = _object()
    image = np.full((height, width, 3), 110, np.uint8)
    cells = [(r, c) for r in range(5) for c in range(6)]
    if copies == 1:
        cells = [(2, 3)]
    for r, c in cells[:copies]:
        y = int((r + 0.5) * height / 5) - obj.shape[0] // 2
        x = int((c + 0.5) * width / 6) - obj.shape[1] // 2
        image[y:y + obj.shape[0], x:x + obj.shape[1]] = obj
    return image


def run_counted(image: np.ndarray, policy: dict):
    """(counts, RunStats dict, detections) of one autofocus call on image under policy."""
    network, bundle = shipped()
    params = resolve(bundle_values(bundle), {"chip_params": CHIP_PARAMS, **policy})
    stats = RunStats("autofocus", 1, len(params.scales), "torch", "cpu", params.padding)
    counter = Counter()

    def hidden_network(batch):
        with counter.hidden():
            return network(batch)
    ctx = cascade.Context(images=[torch.from_numpy(image)], image_sizes=[image.shape[:2]], network=hidden_network,
                          bundle=bundle, params=params, stats=stats, device=torch.device("cpu"))
    with instrumented(counter):
        dets = cascade.run(ctx, "autofocus")
    return counter, stats.as_dict(), dets


# ------------------------------------------------------------------------------------ the tests

@pytest.fixture(scope="module")
def counted():
    return {(name, copies): run_counted(scene(copies), policy)
            for name, policy in POLICIES.items() for copies in (1, 30)}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_the_scenes_yield_1_and_about_30_chips_a_scale(counted, policy):
    one, many = counted[(policy, 1)][1], counted[(policy, 30)][1]
    assert [s["chips"] for s in one["scales"]] == [1, 1, 1]
    assert [s["chips"] for s in many["scales"]] == [1, 30, 30]
    assert sorted(many["batches"]) == sorted(one["batches"]), \
        ("the copies' chips differ in shape: choose CHIP_PARAMS where each copy gives the same chip",
         one["batches"], many["batches"])


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("what", ["ops", "extension", "host_reads", "torch"])
def test_host_work_does_not_grow_with_the_chips(counted, policy, what):
    one, many = counted[(policy, 1)][0].counts[what], counted[(policy, 30)][0].counts[what]
    assert many <= 1.1 * one and one <= 1.1 * many, (what, one, many)


if __name__ == "__main__":
    for name, policy in POLICIES.items():
        for copies in (1, 30):
            c, st, d = run_counted(scene(copies), policy)
            print(name, copies, "chips", [s["chips"] for s in st["scales"]], "batches", st.get("batches"),
                  c.counts, "dets", len(d[0]))
            print("   reads", sorted(set(c.reads)), len(c.reads))
