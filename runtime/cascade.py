"""The AutoFocus cascade (docs/design.md "The cascade"), as named stages over a batch of images.

    whole_image_regions -> run_scale (crop_batch -> network -> decode_batch [-> paint_detections ->
        focus_chips_batch]) -> chip_regions (next scale's chips) -> stack (clip to the image,
        ops.stack_prune: SNIP valid range + focus stacking, as a mask; below the range kept where no
        next-scale chip holds the box whole) -> ... -> merge (ops.soft_nms_segments:
        every image and label of the call in one launch, top max_detections)

Modes: "autofocus" (the cascade), "sniper" (the whole image at every scale, SNIP valid ranges, Soft-NMS:
the baseline, the computation of model/evaluate.py's "pyramid") and "single" (the whole image at
params.scale, no valid range). Arrays are torch tensors on the engine's device from the image on; the
host reads each batch's candidate count (decode; not with padded_decode, the CUDA default), the focus
maps (chips_on_host) or the chips' corners (they decide batch shapes), and once per call the final
detections of every image.

A Region is one network input: a rectangle of one image (original pixels) resized by a factor. Chips of
scale s+1 are cut from the focus maps of scale s's inputs (Algorithm 1, ops.focus_chips_batched +
ops.chips_to_image), so they lie inside their parent and children of disjoint parents are disjoint;
with merge_chips, chips of one image that overlap anyway (possible only when parents overlap) are
replaced by their enclosing rectangle when that runs fewer pixels than the two apart; with align_chips
each chip then widens onto its scale's input grid (align_to_grid).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import ops
from .batching import BatchRegions, BatchRules, plan_batches
from .detections import Detections
from .geometry import (Region, align_to_grid, merge_overlapping, region, resized_size, scale_factor,
                       snap_to_parent)

MODES = ("autofocus", "sniper", "single")


@dataclass
class ScaleDetections:
    """Candidate detections of one scale: boxes in original pixels and, per box, its input region."""
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    region: torch.Tensor    # int64 index into that scale's regions
    image: torch.Tensor     # int64 index of the image
    # bool: the rows decode filled (its output is padded), then the survivors of stacking / the valid
    # range. A mask, not a selection: selecting would need a host read of the count on CUDA; merge drops
    # the rest inside its one Soft-NMS launch.
    keep: torch.Tensor


@dataclass
class Context:
    """What the stages share for one call (built by the engine)."""
    images: list            # HxWx3 uint8 torch tensors on `device` (aspect-padded, see images.py)
    image_sizes: list       # real (height, width) of each image: clipping and the image-border rule
    network: object         # callable: (N, 3, H, W) float32 tensor -> {"scores", "ltrb", "focus"} tensors
    bundle: object
    params: object          # params.CascadeParams
    stats: object           # stats.RunStats
    device: torch.device

    @functools.cached_property
    def image_bounds(self) -> torch.Tensor:
        """(images, 4) [w, h, w, h] on the device, for clipping; `run` makes it before any network call
        (a copy queued behind the network would wait for it)."""
        return ops.to_device(np.array([[w, h, w, h] for h, w in self.image_sizes], np.float32).reshape(-1, 4),
                             self.device)

    @functools.cached_property
    def batching(self) -> BatchRules:
        """What batching needs of the bundle and the call's parameters."""
        return BatchRules.of(self.bundle, self.params)

    @functools.cached_property
    def image_hw(self) -> torch.Tensor:
        """(images, 2) [h, w] float32 on the device: each box's image size for stacking."""
        return self.image_bounds[:, [1, 0]].contiguous()


# ------------------------------------------------------------------------------------ regions

def whole_image_regions(ctx: Context, scale_index: int, size=None) -> list[Region]:
    """Every whole image at scale_index, resized to `size` ([min_side, max_side]) where given, else to
    that scale's."""
    size = ctx.params.scales[scale_index] if size is None else size
    regions = []
    for i, image in enumerate(ctx.images):
        h, w = image.shape[:2]
        f = scale_factor(h, w, size)
        regions.append(region(i, (0, 0, w, h), f))
    return regions


def chip_regions(ctx: Context, chips_per_image: list, scale_index: int) -> list[Region]:
    """Chips (original pixels, per image) as the regions of scale_index."""
    regions = []
    for i, chips in enumerate(chips_per_image):
        if len(chips) == 0:
            continue
        if ctx.params.merge_chips:
            chips = merge_overlapping(chips)
        h, w = ctx.images[i].shape[:2]
        f = scale_factor(h, w, ctx.params.scales[scale_index])
        if ctx.params.align_chips:
            chips = align_to_grid(chips, ctx.bundle.input["size_divisor"] / f, ctx.image_sizes[i])
        for box in chips:
            size = resized_size(box, f)
            if size[0] >= 1 and size[1] >= 1:
                regions.append(Region(i, np.asarray(box, np.float32), f, size))
    return regions


# ------------------------------------------------------------------------------------ one scale

def crop_batch(ctx: Context, regions: list[Region], idx: list[int], shape) -> torch.Tensor:
    """One normalised network batch: ops.crop_resize_images over the batch's regions (one launch on CUDA,
    whichever images they come from)."""
    norm = ctx.bundle.input
    boxes = np.stack([regions[i].box for i in idx]).astype(np.float32)
    factors = np.array([regions[i].factor for i in idx], np.float32)
    owners = np.array([regions[i].image for i in idx], np.int64)
    return ops.crop_resize_images(ctx.images, owners, boxes, factors, shape, norm["mean"], norm["std"],
                                  bgr_to_rgb=norm["image_order"] != norm["channel_order"])


def decode_batch(ctx: Context, out: dict, batch: BatchRegions) -> tuple[ScaleDetections, torch.Tensor]:
    """Network outputs -> candidates in original pixels (scale = region factor, offset = its origin),
    and each candidate's input in the batch (int64). With params.padded_decode no host read of the
    count, which on CUDA would wait for this batch's network before the next batch is queued: the rows
    past the count are zeros with keep False, and every later stage leaves them out by the mask."""
    p = ctx.params.decode
    out = ops.decode(out["scores"], out["ltrb"], stride=ctx.bundle.strides["detection"],
                     score_threshold=p["score_threshold"], max_candidates=p["max_candidates"],
                     scales=batch.factors, offsets=batch.origins, padded=ctx.params.padded_decode)
    boxes, scores, labels, b = out[:4]
    valid = out[4] if ctx.params.padded_decode else torch.ones_like(scores, dtype=torch.bool)
    b = b.long()
    owners = batch.owners[b]
    return ScaleDetections(boxes, scores, labels, owners[:, 0], owners[:, 1], keep=valid), b


def paint_detections(ctx: Context, probs: torch.Tensor, dets: ScaleDetections, det_input: torch.Tensor,
                     batch: BatchRegions, box_score: float, valid_range) -> torch.Tensor:
    """The focus maps (B, H, W) with the cells under the batch's own detections set to 1, for detections
    scoring >= box_score whose sqrt(area) (original px) is inside the finer scale's valid_range: the
    finer scale then also runs on the objects it is valid for that this scale has already found (the
    paper's labels mark only objects < 64 px at this scale; the pyramid's finer scale sees them all)."""
    keep = dets.keep & (dets.scores >= box_score) & in_valid_range(dets.boxes, valid_range)
    # Back to each input's pixels: the inverse of decode's projection.
    origin = batch.origins[det_input].repeat(1, 2)
    local = ((dets.boxes - origin) * batch.factors[det_input][:, None]).contiguous()
    return ops.paint_boxes(probs.contiguous(), local, det_input, ctx.bundle.strides["focus"], keep)


def paint_range(ctx: Context, chip_params: dict, scale_index: int) -> tuple:
    """The sizes paint_detections paints at the transition from scale_index: the finer scale's valid
    range, its upper bound lowered to chip_params["box_max"] when that is set."""
    lo, hi = ctx.params.valid_ranges[scale_index + 1]
    cap = chip_params.get("box_max")
    return (lo, hi if cap is None else min(hi, cap))


def focus_chips_batch(ctx: Context, probs: torch.Tensor, regions: list[Region], idx: list[int],
                      batch: BatchRegions, chip_params: dict):
    """FocusChips (Algorithm 1) of every input of the batch (probs: its (B, H, W) focus maps) ->
    [(image, chip box in original px)].

    Each focus map is read over the input's real cells only (ceil(size / stride)); the chips are
    clipped to the input's real size, divided by its factor and moved by its origin (chips_to_image),
    and their sides within a resized pixel of their parent's put on it (snap_to_parent). Maps on the
    host (the CPU, or chips_on_host) go through NumPy from the one copy on; maps on the GPU stay there
    until one host read of the corners and owners together (they decide the next scale's batches)."""
    stride, k = ctx.bundle.strides["focus"], chip_params["min_size"]
    valid = [(math.ceil(regions[i].size[0] / stride), math.ceil(regions[i].size[1] / stride)) for i in idx]
    on_host = not probs.is_cuda or ctx.params.chips_on_host
    maps = probs.cpu().numpy() if on_host else probs
    cells, b = ops.focus_chips_batched(np.ascontiguousarray(maps) if on_host else maps.contiguous(), valid,
                                       chip_params["threshold"], chip_params["dilation"], k, chip_params["merge"])
    if cells.shape[0] == 0:
        return []
    if on_host:
        b = b.astype(np.int64)
        h = batch.host[b]  # factor, x0, y0, h, w, ...: the same float32 factors and origins as on the device
        chips = ops.chips_to_image(cells, stride, h[:, 0].astype(np.float32), h[:, 3:5], k,
                                   h[:, 1:3].astype(np.float32))
    else:
        b = b.long()
        chips = ops.chips_to_image(cells, stride, batch.factors[b], batch.sizes[b], k, batch.origins[b])
        host = torch.cat([chips, b.to(torch.float32)[:, None]], 1).cpu().numpy()
        chips, b = host[:, :4], host[:, 4].astype(np.int64)
    parents = [regions[idx[j]] for j in b]
    chips = snap_to_parent(chips, np.stack([p.box for p in parents]), np.array([p.factor for p in parents]))
    return [(p.image, box) for p, box in zip(parents, chips)]


def run_scale(ctx: Context, regions: list[Region], scale_index: int, chip_params=None, chips: bool = False):
    """Runs the network on every region of one scale. Returns (ScaleDetections, chips per image for the
    next scale, or None when chip_params is None). chips: the regions are chips (packed with
    packing="canvas", run_scale_packed)."""
    if chips and ctx.params.packing == "canvas":
        from .packed_scale import run_scale_packed  # it builds on this module's stages
        return run_scale_packed(ctx, regions, scale_index, chip_params)
    stats = ctx.stats
    parts, maps = [], []
    for shape, idx in plan_batches(regions, ctx.batching):
        with stats.stage("chips"):
            batch = crop_batch(ctx, regions, idx, shape)
            # Sent before the network call: a copy queued behind the network would wait for it.
            batch_regions = BatchRegions.of(regions, idx, ctx.device)
        stats.add_batch(shape, scale_index)
        for i in idx:
            stats.add_inputs(scale_index, regions[i].size, shape)
        with stats.stage("network"):
            out = ctx.network(batch)
        with stats.stage("postprocess"):
            dets, det_input = decode_batch(ctx, out, batch_regions)
            parts.append(dets)
        if chip_params is not None:
            with stats.stage("chips"):
                probs = out["focus"][:, ctx.params.focus_channels[scale_index]]
                if chip_params["box_score"] is not None:  # (paint_boxes returns a new array)
                    probs = paint_detections(ctx, probs, dets, det_input, batch_regions, chip_params["box_score"],
                                             paint_range(ctx, chip_params, scale_index))
                else:  # kept past the next infer, which may overwrite the backend's outputs (backends: ownership)
                    probs = probs.clone()
                maps.append((probs, idx, batch_regions))
    if chip_params is None:
        return concat(ctx, parts), None
    return concat(ctx, parts), next_scale_chips(ctx, regions, maps, chip_params)


def next_scale_chips(ctx: Context, regions: list[Region], maps: list, chip_params) -> list:
    """Chips of the next scale, a list per image, from the (focus maps, region indices, BatchRegions) of
    every batch of a scale. Called once all its batches are queued: on CUDA the first host read then
    waits once for them all, and the GPU is not left idle while the host cuts each batch's chips before
    queuing the next (a read per batch was a wait per batch). Same chips, same order."""
    next_chips = [[] for _ in ctx.images]
    with ctx.stats.stage("chips"):
        for probs, idx, batch_regions in maps:
            for image, box in focus_chips_batch(ctx, probs, regions, idx, batch_regions, chip_params):
                next_chips[image].append(box)
    return next_chips


def concat(ctx: Context, parts: list[ScaleDetections]) -> ScaleDetections:
    if not parts:
        empty = torch.zeros((0,), device=ctx.device)
        return ScaleDetections(empty.reshape(0, 4), empty, empty.to(torch.int32), empty.long(), empty.long(),
                               empty.bool())
    if len(parts) == 1:
        return parts[0]
    return ScaleDetections(*(torch.cat([getattr(p, f) for p in parts]) for f in
                             ("boxes", "scores", "labels", "region", "image", "keep")))


# ------------------------------------------------------------------------------------ stacking

def _clip_to_images(ctx: Context, dets: ScaleDetections) -> torch.Tensor:
    """Boxes clipped to [0, w] x [0, h] of their own image (one bound per box: batches mix images)."""
    return torch.minimum(dets.boxes.clamp(min=0), ctx.image_bounds[dets.image])


def stack(ctx: Context, dets: ScaleDetections, regions: list[Region], valid_range,
          finer: list[Region] | None = None) -> ScaleDetections:
    """Focus stacking of one scale (docs/design.md): boxes clipped to their image, then ops.stack_prune with
    each box's own chip and image: dropped (keep False) when cut by a chip side that is not an image
    side, or when sqrt(area) (of the box clipped to the image) is outside the scale's valid range. One
    launch for all images of the batch. finer: the next scale's regions (autofocus); with
    params.keep_uncovered a box below the valid range stays where none of them holds it whole."""
    boxes = _clip_to_images(ctx, dets)
    if not regions:
        return replace(dets, boxes=boxes)
    chips = ops.to_device(np.stack([r.box for r in regions]).astype(np.float32), ctx.device)[dets.region]
    lo, hi = valid_range
    if finer is None or not ctx.params.keep_uncovered or lo <= 0:
        kept = ops.stack_prune(boxes, chips, ctx.image_hw[dets.image], (lo, hi))
    else:
        kept = ops.stack_prune(boxes, chips, ctx.image_hw[dets.image], (0.0, hi))
        kept &= in_valid_range(boxes, (lo, math.inf)) | ~held_whole(ctx, boxes, dets.image, finer)
    return replace(dets, boxes=boxes, keep=kept & dets.keep)


def held_whole(ctx: Context, boxes: torch.Tensor, image: torch.Tensor, regions: list[Region],
               block: int = 64) -> torch.Tensor:
    """bool per box: a region of the box's own image contains it (sides may touch). Compared a block of
    regions at a time, so that a large call's padded rows never make a rows x regions table at once."""
    held = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    if not regions:
        return held
    sides = ops.to_device(np.stack([r.box for r in regions]).astype(np.float32), ctx.device)
    owners = ops.to_device(np.array([r.image for r in regions], np.int64), ctx.device)
    for start in range(0, len(regions), block):
        r, owner = sides[start:start + block], owners[start:start + block]
        inside = ((boxes[:, None, :2] >= r[None, :, :2]).all(2) & (boxes[:, None, 2:] <= r[None, :, 2:]).all(2)
                  & (image[:, None] == owner[None, :]))
        held |= inside.any(1)
    return held


def in_valid_range(boxes: torch.Tensor, valid_range) -> torch.Tensor:
    """SNIP rule of the whole-image pyramid (model/evaluate.py): lo <= sqrt(area) <= hi, in float32."""
    lo, hi = valid_range
    side = torch.sqrt((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0))
    return (side >= lo) & (side <= hi)


# ------------------------------------------------------------------------------------ merge

def merge(ctx: Context, per_scale: list[ScaleDetections], ran: list) -> list[Detections]:
    """All scales' survivors -> Soft-NMS (bundle parameters) -> top max_detections, for every image of
    the call in one ops.soft_nms_segments launch: a segment per image, or per image and label when
    class-aware (labels never decay each other, so each label's sequence is the image's sequence
    restricted to it, and merging them by (score desc, index asc) gives the image's own order). The
    one host read of the call copies every image's outputs at once."""
    p = ctx.params.soft_nms
    n_images = len(ctx.images)
    per_scale = per_scale or [concat(ctx, [])]
    with ctx.stats.stage("postprocess"):
        cat = lambda f: torch.cat([getattr(d, f) for d in per_scale])  # noqa: E731
        boxes, scores, labels, image = cat("boxes"), cat("scores"), cat("labels").long(), cat("image")
        keep = cat("keep")
        classes = len(ctx.bundle.classes) if p["class_aware"] else 1
        segments = n_images * classes
        # Dropped boxes sort past the last segment; a stable sort keeps each segment in input order
        # (Soft-NMS breaks score ties by index).
        key = torch.where(keep, image * classes + (labels if classes > 1 else 0), segments)
        order = torch.sort(key, stable=True)[1]
        # (scatter_add, not bincount: on CUDA bincount reads the maximum on the host)
        counts = torch.zeros(segments + 1, dtype=torch.int64, device=ctx.device)
        counts.scatter_add_(0, key, torch.ones_like(key))
        offsets = torch.zeros(segments + 1, dtype=torch.int64, device=ctx.device)
        offsets[1:] = torch.cumsum(counts[:segments], 0)
        taken, decayed, _ = ops.soft_nms_segments(boxes[order].contiguous(), scores[order].contiguous(), offsets,
                                                  method=p["method"], sigma=p["sigma"],
                                                  iou_threshold=p["iou_threshold"],
                                                  score_threshold=p["score_threshold"],
                                                  max_output=ctx.params.max_detections)
        src = order[taken.clamp(min=0)]  # index into the concatenation (unused slots: any, dropped below)
        # float32 holds the boxes and scores as they are and the small integers exactly (< 2^24)
        table = torch.cat([boxes[src], decayed[:, None],
                           torch.stack([labels[src], image[src], src, taken], 1).float()], 1)
        host = table.cpu().numpy()
        host = host[host[:, 8] >= 0]
        # Rows split by image with one stable sort (each image's rows keep their Soft-NMS order).
        host = host[np.argsort(host[:, 6], kind="stable")]
        bounds = np.searchsorted(host[:, 6], np.arange(n_images + 1))
        chips = [_chips_by_image(regions, n_images) for regions in ran]
        out = []
        for i in range(n_images):
            rows = host[bounds[i]:bounds[i + 1]]
            if classes > 1:
                rows = rows[np.lexsort((rows[:, 7], -rows[:, 4]))][:ctx.params.max_detections]
            out.append(Detections(rows[:, :4], rows[:, 4], rows[:, 5], [c[i] for c in chips]))
        return out


def _chips_by_image(regions: list[Region], n_images: int) -> list[np.ndarray]:
    """Each image's regions' boxes, (M, 4) float32, in the order of regions."""
    boxes = [[] for _ in range(n_images)]
    for r in regions:
        boxes[r.image].append(r.box)
    return [np.array(b, np.float32).reshape(-1, 4) for b in boxes]


# ------------------------------------------------------------------------------------ modes

def autofocus(ctx: Context) -> list[Detections]:
    """Scale 1 on every whole image (at params.coarse_scale where set); each finer scale only on the
    FocusChips of the one before."""
    scales = len(ctx.params.scales)
    regions = whole_image_regions(ctx, 0, ctx.params.coarse_scale)
    kept, ran = [], []
    for s in range(scales):
        ran.append(regions)
        if not regions:
            break
        chip_params = ctx.params.chip_params[s] if s + 1 < scales else None
        dets, next_chips = run_scale(ctx, regions, s, chip_params, chips=s > 0)
        finer = None if chip_params is None else chip_regions(ctx, next_chips, s + 1)
        with ctx.stats.stage("postprocess"):
            kept.append(stack(ctx, dets, regions, ctx.params.valid_ranges[s], finer))
        if finer is None:
            break
        regions = finer
    return _finish(ctx, kept, ran)


def sniper(ctx: Context) -> list[Detections]:
    """The whole image at every scale; each scale keeps its valid range; then Soft-NMS."""
    kept, ran = [], []
    for s in range(len(ctx.params.scales)):
        regions = whole_image_regions(ctx, s)
        ran.append(regions)
        dets, _ = run_scale(ctx, regions, s)
        with ctx.stats.stage("postprocess"):
            boxes = _clip_to_images(ctx, dets)
            kept.append(replace(dets, boxes=boxes, keep=dets.keep & in_valid_range(boxes, ctx.params.valid_ranges[s])))
    return _finish(ctx, kept, ran)


def single(ctx: Context) -> list[Detections]:
    """The whole image at one scale (params.scale, 1-based), no valid range; then Soft-NMS."""
    s = ctx.params.scale - 1
    ran = [[] for _ in ctx.params.scales]
    ran[s] = whole_image_regions(ctx, s)
    dets, _ = run_scale(ctx, ran[s], s)
    with ctx.stats.stage("postprocess"):
        kept = [replace(dets, boxes=_clip_to_images(ctx, dets))]
    return _finish(ctx, kept, ran)


def _finish(ctx: Context, kept: list[ScaleDetections], ran: list) -> list[Detections]:
    ran = ran + [[] for _ in range(len(ctx.params.scales) - len(ran))]
    return merge(ctx, kept, ran)


def run(ctx: Context, mode: str) -> list[Detections]:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    ctx.image_bounds  # noqa: B018 (made now, before the first network call)
    return {"autofocus": autofocus, "sniper": sniper, "single": single}[mode](ctx)
