"""One scale of the cascade with its chips packed onto fixed canvases (packing="canvas"): the stages of
runtime/cascade.py around runtime/packing.py's layout. Whole-image scales never come here."""
from __future__ import annotations

import numpy as np
import torch

from . import ops, packing
from .batching import BatchRegions
from .cascade import (Context, Region, ScaleDetections, concat, crop_batch, next_scale_chips,
                      paint_detections, paint_range)


def run_scale_packed(ctx: Context, regions: list[Region], scale_index: int, chip_params=None):
    """run_scale with the scale's chips packed onto its canvases (runtime/packing.py): each canvas one
    network input, canvases of one shape batched up to max_batch. Each detection goes to the chip its box
    centre lies in (none, in a gutter: dropped), is moved by that chip's offset, projected to original
    pixels like the chip's own input and clipped to the chip: for stacking that equals the unpacked box
    (a box crossing a chip side that is not an image side is dropped either way; one crossing an image
    side is clipped there either way), and no box reaches a neighbour. Each chip's focus map is the
    canvas's, cut at its offset (a multiple of the grid, so of the focus stride)."""
    stats, device = ctx.stats, ctx.device
    stride = ctx.bundle.strides["focus"]
    with stats.stage("chips"):
        sizes = np.array([r.size for r in regions], np.int64).reshape(-1, 2)
        chip_boxes = np.array([r.box for r in regions], np.float64).reshape(-1, 4)
        gutter = ctx.params.canvas_gutter if ctx.params.canvas_gutter is not None else packing.bundle_gutter(ctx.bundle)
        layout = packing.pack(sizes, packing.canvases_for(ctx.bundle, ctx.params.scales, scale_index), gutter,
                              ctx.bundle.input["size_divisor"], own_shape=lambda h, w: ctx.batching.input_shape((h, w)))
        by_shape: dict[tuple, list[int]] = {}
        for c, shape in enumerate(map(tuple, layout.shapes.tolist())):
            by_shape.setdefault(shape, []).append(c)
    parts, maps = [], []
    for shape, canvases in by_shape.items():
        step = ctx.batching.batch_limit(shape)
        for k in range(0, len(canvases), step):
            batch_canvases = canvases[k:k + step]
            with stats.stage("chips"):
                rows = packing.rows_of(layout, batch_canvases)
                slot_of = np.full(layout.count, -1, np.int64)
                slot_of[np.asarray(batch_canvases, np.int64)] = np.arange(len(batch_canvases))
                # per chip: its canvas in the batch, its rectangle there, its box (original px)
                off = layout.offsets[rows]
                where = np.concatenate([slot_of[layout.canvas[rows]][:, None], off, off + sizes[rows, ::-1],
                                        chip_boxes[rows]], 1).astype(np.float64).reshape(-1, 9)
                where_t = ops.to_device(where, device)
                placed = BatchRegions.of(regions, list(rows), device)
                batch = _paste(ctx, regions, rows, sizes, where_t, len(batch_canvases), shape)
            stats.add_batch(shape, scale_index)
            for i in rows:
                stats.add_inputs(scale_index, regions[i].size, (0, 0))
            for _ in batch_canvases:
                stats.add_canvas(scale_index, shape)
            with stats.stage("network"):
                out = ctx.network(batch)
            with stats.stage("postprocess"):
                p = ctx.params.decode
                dec = ops.decode(out["scores"], out["ltrb"], stride=ctx.bundle.strides["detection"],
                                 score_threshold=p["score_threshold"], max_candidates=p["max_candidates"],
                                 padded=ctx.params.padded_decode)
                boxes, scores, labels, b = dec[:4]
                valid = dec[4] if ctx.params.padded_decode else torch.ones_like(scores, dtype=torch.bool)
                owner, found = packing.owners(boxes, b.long(), where_t[:, 1:5].float(), where_t[:, 0].long())
                offset = where_t[owner, 1:3].float().repeat(1, 2)
                chip = where_t[owner, 5:9].float()
                local = (boxes - offset) / placed.factors[owner][:, None] + placed.origins[owner].repeat(1, 2)
                mapped = torch.minimum(torch.maximum(local, chip[:, [0, 1, 0, 1]]), chip[:, [2, 3, 2, 3]])
                dets = ScaleDetections(mapped, scores, labels, placed.owners[owner, 0], placed.owners[owner, 1],
                                       keep=valid & found)
                parts.append(dets)
            if chip_params is not None:
                with stats.stage("chips"):
                    focus = out["focus"][:, ctx.params.focus_channels[scale_index]]
                    cell0 = (where_t[:, [2, 1]] / stride).long()  # (y, x) of each chip's first cell
                    hm, wm = (int(v) for v in np.ceil(sizes[rows] / stride).max(0))
                    ys = (cell0[:, :1] + torch.arange(hm, device=device)).clamp(max=focus.shape[1] - 1)
                    xs = (cell0[:, 1:] + torch.arange(wm, device=device)).clamp(max=focus.shape[2] - 1)
                    probs = focus[where_t[:, 0].long()[:, None, None], ys[:, :, None], xs[:, None, :]]
                    if chip_params["box_score"] is not None:
                        probs = paint_detections(ctx, probs, dets, owner, placed, chip_params["box_score"],
                                                 paint_range(ctx, chip_params, scale_index))
                    maps.append((probs, list(rows), placed))
    if chip_params is None:
        return concat(ctx, parts), None
    return concat(ctx, parts), next_scale_chips(ctx, regions, maps, chip_params)


def _paste(ctx: Context, regions: list[Region], rows, sizes, where_t, count: int, shape) -> torch.Tensor:
    """The batch's canvases (count, 3, H, W): its chips (rows) cut by one crop launch per size class (a slot
    of the class's largest sides: one slot for all would cost the largest chip's pixels each) and written
    at their offsets by one indexed copy per class (packing.paste_slots): the host work does not grow with
    the chips."""
    flat = torch.zeros(count * 3 * shape[0] * shape[1] + 1, device=ctx.device)
    classes = packing.size_classes(sizes[rows])
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        slot = tuple(int(v) for v in sizes[rows[members]].max(0))
        crops = crop_batch(ctx, regions, list(rows[members]), slot)
        sel = ops.to_device(members, ctx.device) if len(members) < len(rows) else slice(None)
        w = where_t[sel]
        packing.paste_slots(flat, (count, 3, *shape), crops, w[:, 0].long(), w[:, 1:3].long(),
                            (w[:, [4, 3]] - w[:, [2, 1]]).long())
    return flat[:-1].view(count, 3, *shape)
