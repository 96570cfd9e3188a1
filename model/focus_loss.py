"""The FocusPixel loss of what Algorithm 1 needs (the "objects" focus loss of model.train and
model.focus_refit): an object is recalled when one of its cells passes the threshold, so each positive
object is scored at its best cell, and every negative cell by its cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

FOCUS_LOSSES = ("cells", "objects")  # every labelled cell, or each object's best cell (object_loss)


def object_cells(objects: torch.Tensor) -> dict:
    """The cells of every positive object ((P, 5) [map, y0, y1, x0, x1)), flattened for object_loss:
    {"map", "y", "x", "object"} (one entry per cell, int64)."""
    maps, ys, xs, ids = [], [], [], []
    for j, (i, y0, y1, x0, x1) in enumerate(objects.tolist()):
        yy, xx = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
        n = yy.numel()
        maps.append(torch.full((n,), i))
        ys.append(yy.reshape(-1))
        xs.append(xx.reshape(-1))
        ids.append(torch.full((n,), j))
    cat = (lambda v: torch.cat(v).long()) if maps else (lambda v: torch.zeros(0, dtype=torch.long))  # noqa: E731
    return {"map": cat(maps), "y": cat(ys), "x": cat(xs), "object": cat(ids)}


def object_loss(logits: torch.Tensor, labels: torch.Tensor, cells: dict, perm: torch.Tensor) -> torch.Tensor:
    """The loss of what Algorithm 1 needs (--loss objects): every positive object of the batch's maps
    (`perm`: their indices in the data) gets -log p at its best cell, the one a chip grows around (an object
    is recalled when one of its cells passes the threshold, as coverage_at_recall counts it), averaged over
    the objects; plus the mean cross-entropy of the negative cells. Its other cells are free: the head
    need not light a whole object, so fewer cells pass the threshold for the same recall."""
    margin = logits[:, 1] - logits[:, 0]  # log p / (1 - p)
    n_maps = max(int(cells["map"].max()) if cells["map"].numel() else 0, int(perm.max())) + 1
    where = torch.full((n_maps,), -1, dtype=torch.long)  # data map index -> position in the batch
    where[perm] = torch.arange(len(perm))
    b = where[cells["map"]]
    inside = b >= 0
    negative = labels == 0
    neg = F.softplus(margin[negative]).mean() if negative.any() else margin.sum() * 0.0
    if not inside.any():
        return neg
    obj = cells["object"][inside]
    values = margin[b[inside], cells["y"][inside], cells["x"][inside]]
    best = torch.full((int(obj.max()) + 1,), -float("inf"), dtype=values.dtype).scatter_reduce(0, obj, values, "amax")
    best = best[torch.unique(obj)]
    return F.softplus(-best).mean() + neg
