"""Which inputs go into which network call: each resized region padded to its input shape (a bundle
bucket, or the next multiple of the size divisor), grouped into batches of one shape up to a batch limit
(padding "bucket"/"divisor"), or largest first into shared buckets (padding "shared"); and the batch's
region parameters sent to the device in one copy (BatchRegions). Everything it needs comes in as
arguments (BatchRules: the bundle's buckets and the call's padding and max_batch)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import ops
from .geometry import Region, padded_length

SHARED_MIN_FILL = 0.5  # padding "shared": an input joins a batch whose bucket is at most 2x its own in area


@dataclass(frozen=True)
class BatchRules:
    """What batching needs: padding ("bucket", "divisor" or "shared"), the size divisor, the bundle's
    buckets [(h, w)] and their max batches, and the call's max_batch (None: the bucket's own)."""
    padding: str
    size_divisor: int
    buckets: tuple
    bucket_max_batch: tuple
    max_batch: int | None = None

    @staticmethod
    def of(bundle, params) -> "BatchRules":
        return BatchRules(params.padding, bundle.input["size_divisor"], tuple(tuple(b) for b in bundle.buckets),
                          tuple(bundle.max_batch), params.max_batch)

    def input_shape(self, size) -> tuple:
        """The padded network input holding a resized region: its bucket, or the next multiple of 32."""
        h, w = size
        if self.padding == "divisor":
            return padded_length(h, self.size_divisor), padded_length(w, self.size_divisor)
        for bh, bw in sorted(self.buckets, key=lambda b: (b[0] * b[1], b[0], b[1])):
            if bh >= h and bw >= w:
                return bh, bw
        raise ValueError(f"a {h} x {w} network input fits no bucket of the bundle ({list(self.buckets)}): the "
                         "scales exceed what the bundle was built for; use padding='divisor' (not with TensorRT) "
                         "or rebuild the bundle for these scales")

    def batch_limit(self, shape) -> int:
        """max_batch when set; else the max batch of the smallest bucket holding shape (1 when none does)."""
        if self.max_batch is not None:
            return self.max_batch
        for (bh, bw), mb in zip(self.buckets, self.bucket_max_batch):
            if (bh, bw) == tuple(shape):
                return mb
        holding = [(bh * bw, mb) for (bh, bw), mb in zip(self.buckets, self.bucket_max_batch)
                   if bh >= shape[0] and bw >= shape[1]]
        return min(holding)[1] if holding else 1


def plan_batches(regions: list[Region], rules: BatchRules) -> list[tuple]:
    """[(input shape, [region indices])]: regions grouped by padded input shape (images kept together
    inside a group), each group split at its bucket's max batch; padding "shared": see _shared_batches."""
    if rules.padding == "shared":
        return _shared_batches(regions, rules)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(regions):
        groups.setdefault(rules.input_shape(r.size), []).append(i)
    plan = []
    for shape, idx in groups.items():
        idx.sort(key=lambda i: regions[i].image)
        step = rules.batch_limit(shape)
        plan += [(shape, idx[k:k + step]) for k in range(0, len(idx), step)]
    return plan


def _shared_batches(regions: list[Region], rules: BatchRules) -> list[tuple]:
    """Largest first: each batch takes the bucket of the largest input left and fills up to its max batch
    with the next largest inputs that fit in it and whose own bucket has at least SHARED_MIN_FILL of its
    area. On a GPU a network call costs far more than its pixels (H200, PyTorch eager: about 1.7 ms a
    call at 0.2 and at 2.8 Mpx alike), so fewer calls win; the fill bound keeps a small chip from running
    at the cost of a large one (H100, max_batch 16, no bound: 1.02 of sniper's padded pixels, not 0.70)."""
    shapes = [rules.input_shape(r.size) for r in regions]
    area = [h * w for h, w in shapes]
    left = sorted(range(len(regions)), key=lambda i: (-area[i], regions[i].image, i))
    plan = []
    while left:
        shape = shapes[left[0]]
        room = rules.batch_limit(shape)
        take = [i for i in left if shapes[i][0] <= shape[0] and shapes[i][1] <= shape[1]
                and area[i] >= SHARED_MIN_FILL * area[left[0]]][:room]
        taken = set(take)
        left = [i for i in left if i not in taken]
        plan.append((shape, sorted(take, key=lambda i: (regions[i].image, i))))  # crop_batch: images together
    return plan


@dataclass
class BatchRegions:
    """The batch's regions as tensors, sent to the device in one copy (each small host-to-device copy
    costs a GPU a call of its own): factors (n,), origins (n, 2) float32; sizes (n, 2) and owners
    (n, 2: region index, image) int64. `host` keeps the float64 array for work done on the host."""
    factors: torch.Tensor
    origins: torch.Tensor
    sizes: torch.Tensor
    owners: torch.Tensor
    host: np.ndarray

    @staticmethod
    def of(regions: list[Region], idx: list[int], device) -> "BatchRegions":
        host = np.array([[regions[i].factor, regions[i].box[0], regions[i].box[1], *regions[i].size, i,
                          regions[i].image] for i in idx], np.float64).reshape(-1, 7)
        return BatchRegions.from_array(host, device)

    @staticmethod
    def from_array(host: np.ndarray, device) -> "BatchRegions":
        t = ops.to_device(host, device)
        return BatchRegions(t[:, 0].float(), t[:, 1:3].float(), t[:, 3:5].long(), t[:, 5:7].long(), host)
