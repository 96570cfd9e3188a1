"""Train the AutoFocus detector on SNIPER chips, on the CPU, within a wall-clock budget.

    python3 -m model.train                      # model/configs/default.json -> runs/default/
    python3 -m model.train --config my.json --resume
    python3 -m model.train --train-annotations my/train.json --train-images my/images \
        --val-annotations my/val.json --val-images my/images --run-dir runs/mine   # your COCO data

Classes come from the COCO file's categories (any ids, labels 0-based in category-id order; the
checkpoint records their names, and export writes them into bundle.json). Without COCO files the
generated synthetic splits are used.

Phase 1 trains on positive chips; at `schedule.phase1_fraction` of the budget the model is run on a
subset of training images at every scale, and chips covering confident false positives are added as
negative chips for phase 2 (SNIPER). Learning rate: linear warm-up, cosine decay over the wall-clock
budget (so the schedule ends on time whatever the machine's speed). Checkpoints go to
runs/<name>/last.pt every few minutes; the final weights to runs/<name>/final.pt.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

# On a shared, oversubscribed CPU, OpenMP threads that spin while waiting make every conv several times
# slower (measured here: 0.57 s vs 2.7-4.9 s per step). Only effective if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from runtime import ops
from runtime.geometry import padded_length, resized_image_size, scale_factor

from model.checkpoint import read_checkpoint, save_checkpoint
from model.chips import Chip, chip_boxes, negative_chips, positive_chips, render_chip
from model.config import load_config
from model.data import check_same_classes, read_image
from model.evaluate import coco_eval, metrics_of
from model.focus_loss import object_cells, object_loss
from model.labels import detection_targets, focus_labels, focus_positive_spans, transition_bounds, valid_range_mask
from model.network import AutoFocusNet, build_model

# ----------------------------------------------------------------------------- data

def load_split(split: str, root: str | Path | None = None):
    """The CocoSet of a split, generating it first if missing (model.synth.ensure_split)."""
    from model import data, synth
    result = synth.ensure_split(split) if root is None else synth.ensure_split(split, out_dir=root)
    if isinstance(result, data.CocoSet):
        return result
    path = Path(result)
    if path.is_dir():
        path = path / "annotations.json"
    return data.load_coco(path)


class ChipDataset(Dataset):
    """Renders chips with their targets (focus labels at stride 16, detection targets at stride 8)."""

    def __init__(self, coco, chips: list[Chip], config: dict, augment: bool = True):
        self.coco, self.chips, self.config, self.augment = coco, chips, config, augment
        self.num_classes = len(coco.classes)

    def __len__(self):
        return len(self.chips)

    def _jitter(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        aug = self.config["augment"]
        x = img.astype(np.float32)
        if aug["brightness"] > 0:
            x *= 1.0 + rng.uniform(-aug["brightness"], aug["brightness"])
        if aug["contrast"] > 0:
            m = x.mean()
            x = (x - m) * (1.0 + rng.uniform(-aug["contrast"], aug["contrast"])) + m
        if aug["saturation"] > 0:
            gray = x.mean(axis=2, keepdims=True)
            x = (x - gray) * (1.0 + rng.uniform(-aug["saturation"], aug["saturation"])) + gray
        return np.clip(x, 0, 255).astype(np.uint8)

    def __getitem__(self, i):
        chip = self.chips[i]
        rng = random.Random()
        info = self.coco.images[chip.image_index]
        img = read_image(info["path"])
        flip = self.augment and rng.random() < self.config["augment"]["hflip_prob"]
        if self.augment:
            img = self._jitter(img, rng)
        x = render_chip(img, chip.factor, chip.x0, chip.y0, chip.size, chip.size, flip=flip)
        targets = chip_targets(self.coco, chip, self.config, flip)
        return torch.from_numpy(x), {k: torch.from_numpy(v) for k, v in targets.items()}


def chip_targets(coco, chip: Chip, config: dict, flip: bool = False) -> dict:
    """Focus labels + detection targets of one chip (boxes scaled, cropped, optionally mirrored)."""
    image_id = coco.images[chip.image_index]["id"]
    info = coco.images[chip.image_index]
    boxes = coco.boxes.get(image_id, np.zeros((0, 4), np.float32))
    classes = coco.labels.get(image_id, np.zeros((0,), np.int64))
    size = chip.size
    cb = chip_boxes(boxes, chip.factor, chip.x0, chip.y0, size, flip)
    fl = config["focus_labels"]
    focus = focus_labels(cb, (size, size), config["network"]["focus_stride"], fl["a"], fl["b"], fl["c"])

    # The visible part of each box: inside the chip and inside the (resized) image.
    rw, rh = info["width"] * chip.factor, info["height"] * chip.factor
    if flip:
        ix0, ix1 = size - (rw - chip.x0), size + chip.x0
    else:
        ix0, ix1 = -chip.x0, rw - chip.x0
    lo_x, hi_x = max(0.0, ix0), min(float(size), ix1)
    lo_y, hi_y = max(0.0, -chip.y0), min(float(size), rh - chip.y0)
    clipped = cb.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(lo_x, hi_x)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(lo_y, hi_y)
    area = np.clip(cb[:, 2] - cb[:, 0], 0, None) * np.clip(cb[:, 3] - cb[:, 1], 0, None)
    vis_area = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(clipped[:, 3] - clipped[:, 1], 0, None)
    present = vis_area > 0
    visible = vis_area >= config["targets"]["min_visible_fraction"] * np.maximum(area, 1e-9)
    valid = valid_range_mask(boxes, config["chips"]["valid_ranges"][chip.scale_index]) if len(boxes) else \
        np.zeros(0, bool)
    pos = present & valid & visible
    ign = present & ~pos
    det = detection_targets(clipped[pos], classes[pos], clipped[ign], classes[ign], len(coco.classes),
                            (size, size), config["network"]["det_stride"], config["targets"]["alpha"],
                            config["targets"]["beta"])
    det["focus_labels"] = focus
    objects = config["loss"].get("focus_loss") == "objects"
    if objects:  # each positive object's cells, for object_loss
        det["focus_objects"] = focus_positive_spans(cb, (size, size), config["network"]["focus_stride"],
                                                    fl["a"], fl["b"])
    if fl.get("transitions"):
        det.update(transition_targets(cb, chip, config, objects))
    return det


def transition_targets(cb: np.ndarray, chip: Chip, config: dict, objects: bool) -> dict:
    """Per-transition focus heads (issue 21; config "focus_labels" "transitions", as model.focus_refit
    attaches them): a chip of scale s trains transition s's own head, labelled for the finer scale it feeds
    (model.labels.transition_bounds at the chip's factor). "transition_index" is s, or -1 (labels all
    ignored) where scale s has no head of its own (the last scale, or a null entry)."""
    fl, stride, size = config["focus_labels"], config["network"]["focus_stride"], chip.size
    heads = fl["transitions"]
    spec = heads[chip.scale_index] if chip.scale_index < len(heads) else None
    if spec is None:
        cells = -(-size // stride)
        out = {"transition_labels": np.full((cells, cells), -1, np.int64), "transition_index": np.array(-1)}
        spans = np.zeros((0, 4), np.int64)
    else:
        a, b, c = transition_bounds(spec["b_original"], chip.factor, fl["a"], fl["b"], fl["c"])
        out = {"transition_labels": focus_labels(cb, (size, size), stride, a, b, c),
               "transition_index": np.array(chip.scale_index)}
        spans = focus_positive_spans(cb, (size, size), stride, a, b)
    if objects:
        out["transition_objects"] = spans
    return out


def collate(batch):
    """Stacks the chips; "focus_objects" and "transition_objects" (a varying number of rows per chip) are
    padded with -1 rows."""
    images = torch.stack([b[0] for b in batch])
    targets = {}
    for k in batch[0][1]:
        if k.endswith("_objects"):
            rows = max(max(len(b[1][k]) for b in batch), 1)
            targets[k] = torch.stack([F.pad(b[1][k], (0, 0, 0, rows - len(b[1][k])), value=-1) for b in batch])
        else:
            targets[k] = torch.stack([b[1][k] for b in batch])
    return images, targets


def batch_objects(focus_objects: torch.Tensor) -> torch.Tensor:
    """(B, M, 4) spans padded with -1 rows -> (P, 5) [chip, y0, y1, x0, x1), as object_cells takes them."""
    chip, row = torch.nonzero(focus_objects[:, :, 1] > focus_objects[:, :, 0], as_tuple=True)
    return torch.cat([chip[:, None], focus_objects[chip, row]], dim=1)


def build_positive_chips(coco, config: dict) -> list[Chip]:
    ch = config["chips"]
    chips = []
    for idx, info in enumerate(coco.images):
        boxes = coco.boxes.get(info["id"], np.zeros((0, 4), np.float32))
        chips += positive_chips(idx, boxes, (info["height"], info["width"]), ch["scales"], ch["valid_ranges"],
                                ch["chip_size"], ch["grid_stride"], tuple(ch["whole_image_scales"]))
    return chips


# ----------------------------------------------------------------------------- losses

def cell_centres(h: int, w: int, stride: int, device=None):
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    return ys.view(h, 1).expand(h, w), xs.view(1, w).expand(h, w)


def ltrb_to_boxes(ltrb: torch.Tensor, stride: int) -> torch.Tensor:
    """(N,4,h,w) distances -> (N,4,h,w) boxes [x1,y1,x2,y2] in input pixels."""
    cy, cx = cell_centres(ltrb.shape[2], ltrb.shape[3], stride, ltrb.device)
    return torch.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]], dim=1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU for (K,4) boxes."""
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_t = (target[:, 2] - target[:, 0]).clamp(min=0) * (target[:, 3] - target[:, 1]).clamp(min=0)
    iw = (torch.min(pred[:, 2], target[:, 2]) - torch.max(pred[:, 0], target[:, 0])).clamp(min=0)
    ih = (torch.min(pred[:, 3], target[:, 3]) - torch.max(pred[:, 1], target[:, 1])).clamp(min=0)
    inter = iw * ih
    union = area_p + area_t - inter + 1e-6
    ew = torch.max(pred[:, 2], target[:, 2]) - torch.min(pred[:, 0], target[:, 0])
    eh = torch.max(pred[:, 3], target[:, 3]) - torch.min(pred[:, 1], target[:, 1])
    enclose = ew * eh + 1e-6
    giou = inter / union - (enclose - union) / enclose
    return 1.0 - giou


def compute_losses(outputs: dict, targets: dict, config: dict) -> dict:
    lw = config["loss"]
    logits = outputs["cls_logits"]
    hm, cw = targets["heatmap"], targets["cls_weight"]
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = (hm >= 1.0).float()
    # Penalty-reduced focal loss (CornerNet/CenterNet), cells with weight 0 are ignored.
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p ** 2 * (1 - hm) ** 4 * (1 - pos)
    num_pos = pos.sum().clamp(min=1.0)
    heatmap_loss = ((pos_loss + neg_loss) * cw).sum() / num_pos

    rw = targets["reg_weight"]
    mask = rw > 0
    if mask.any():
        pred_boxes = ltrb_to_boxes(outputs["ltrb"], config["network"]["det_stride"]).permute(0, 2, 3, 1)[mask]
        tgt_boxes = targets["box_target"].permute(0, 2, 3, 1)[mask]
        w = rw[mask]
        box_loss = (giou_loss(pred_boxes, tgt_boxes) * w).sum() / w.sum().clamp(min=1e-6)
    else:
        box_loss = outputs["ltrb"].sum() * 0.0

    if "focus_logits" not in outputs:  # a detector trained without a focus head (refit one later)
        focus_loss = torch.zeros((), device=logits.device)
    else:
        focus_loss = focus_map_loss(outputs["focus_logits"], targets["focus_labels"], targets.get("focus_objects"))
    total = lw["heatmap_weight"] * heatmap_loss + lw["giou_weight"] * box_loss + lw["focus_weight"] * focus_loss
    losses = {"heatmap": heatmap_loss, "giou": box_loss, "focus": focus_loss}
    if "transition_logits" in outputs and "transition_labels" in targets:
        # Each transition's own head on the chips of its coarse scale, weighted as the paper's head.
        transition_loss = focus_loss * 0.0
        for k, head_logits in outputs["transition_logits"].items():
            chips = targets["transition_index"] == k
            if chips.any():
                spans = targets["transition_objects"][chips] if "transition_objects" in targets else None
                transition_loss = transition_loss + focus_map_loss(head_logits[chips],
                                                                   targets["transition_labels"][chips], spans)
        total = total + lw["focus_weight"] * transition_loss
        losses["transition"] = transition_loss
    return {"loss": total, **losses}


def focus_map_loss(logits: torch.Tensor, labels: torch.Tensor, spans: torch.Tensor | None) -> torch.Tensor:
    """A focus head's loss on a batch of chips: object_loss where the chips carry their objects' spans
    (loss focus_loss "objects"), else the cross-entropy of the labelled cells."""
    if spans is not None:
        return object_loss(logits, labels, object_cells(batch_objects(spans)), torch.arange(len(labels)))
    if (labels >= 0).any():
        return F.cross_entropy(logits, labels, ignore_index=-1)
    return logits.sum() * 0.0


# ----------------------------------------------------------------------------- inference helpers

@torch.no_grad()
def detect_resized(model: AutoFocusNet, image_bgr: np.ndarray, factor: float, config: dict,
                   score_threshold: float = 0.05, max_detections: int = 100):
    """Whole image resized by `factor` (padded to 32) -> boxes in ORIGINAL pixels, scores, labels, focus map."""
    h, w = image_bgr.shape[:2]
    rh, rw = resized_image_size(h, w, factor)
    ph, pw = padded_length(rh, 32), padded_length(rw, 32)
    x = render_chip(image_bgr, factor, 0, 0, ph, pw)
    # Zero (normalised) padding beyond the resized image, as the runtime does.
    x[:, rh:, :] = 0
    x[:, :, rw:] = 0
    out = model(torch.from_numpy(x)[None], export=True)
    scores = out["scores"][0]
    c, gh, gw = scores.shape
    flat = scores.reshape(-1)
    k = min(max_detections * 4, flat.numel())
    top, idx = flat.topk(k)
    keep = top > score_threshold
    top, idx = top[keep], idx[keep]
    labels = idx // (gh * gw)
    cell = idx % (gh * gw)
    boxes = ltrb_to_boxes(out["ltrb"], config["network"]["det_stride"])[0].reshape(4, -1)[:, cell].T / factor
    # Class-aware NMS; keep comes back by descending score.
    kept = ops.nms(boxes.contiguous(), top.contiguous(), config["validation"]["nms_iou"], labels)[:max_detections]
    return boxes[kept].numpy(), top[kept].numpy(), labels[kept].numpy(), out["focus"][0, 1].numpy()


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    ab = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (aa[:, None] + ab[None] - inter + 1e-9)


def focus_recall(focus_prob: np.ndarray, boxes_original: np.ndarray, factor: float, threshold: float,
                 stride: int = 16) -> tuple[int, int]:
    """How many boxes overlap at least one focus cell with probability >= threshold: (hits, total)."""
    hits = 0
    gh, gw = focus_prob.shape
    for b in boxes_original * factor:
        x0, x1 = max(int(b[0] // stride), 0), min(int(math.ceil(b[2] / stride)), gw)
        y0, y1 = max(int(b[1] // stride), 0), min(int(math.ceil(b[3] / stride)), gh)
        if x1 > x0 and y1 > y0 and (focus_prob[y0:y1, x0:x1] >= threshold).any():
            hits += 1
    return hits, len(boxes_original)


@torch.no_grad()
def quick_validate(model: AutoFocusNet, coco, config: dict) -> dict:
    """AP50 at one scale (pycocotools, model.evaluate.coco_eval, in the scale's SNIP valid range: other
    ground truths ignored) as a fraction, and the FocusPixel recall of small objects."""
    v = config["validation"]
    scales = config["chips"]["scales"]
    was_training = model.training
    model.eval()
    n = min(v["images"], len(coco.images))
    dets = {}
    f1_hits = f1_tot = f2_hits = f2_tot = 0
    for info in coco.images[:n]:
        img = read_image(info["path"])
        gb = coco.boxes.get(info["id"], np.zeros((0, 4), np.float32))
        gsize = np.sqrt(np.clip(gb[:, 2] - gb[:, 0], 0, None) * np.clip(gb[:, 3] - gb[:, 1], 0, None))
        f2 = scale_factor(info["height"], info["width"], scales[v["scale_index"]])
        boxes, scores, labels, focus2 = detect_resized(model, img, f2, config, v["score_threshold"],
                                                       v["max_detections"])
        dets[info["id"]] = (boxes, scores, labels)
        h, c = focus_recall(focus2, gb[gsize < v["small_below_scale2"]], f2, v["focus_threshold_scale2"])
        f2_hits, f2_tot = f2_hits + h, f2_tot + c
        f1 = scale_factor(info["height"], info["width"], scales[0])
        *_, focus1 = detect_resized(model, img, f1, config, 1.0, 1)
        h, c = focus_recall(focus1, gb[gsize < v["small_below_scale1"]], f1, v["focus_threshold_scale1"])
        f1_hits, f1_tot = f1_hits + h, f1_tot + c
    model.train(was_training)
    ap50 = metrics_of(coco_eval(coco, dets, valid_range=v["valid_range"]))["AP50"] / 100.0
    return {"ap50": ap50, "focus_recall_s1": f1_hits / max(f1_tot, 1), "focus_recall_s2": f2_hits / max(f2_tot, 1)}


@torch.no_grad()
def mine_negative_chips(model: AutoFocusNet, coco, positives: list[Chip], config: dict, seed: int) -> list[Chip]:
    """SNIPER negative chips: confident detections matching no ground truth, in the scale's valid range,
    not covered by a positive chip, on a random subset of training images at every scale."""
    mc, ch = config["mining"], config["chips"]
    was_training = model.training
    model.eval()
    rng = random.Random(seed)
    indices = rng.sample(range(len(coco.images)), min(mc["images"], len(coco.images)))
    negatives = []
    for idx in indices:
        info = coco.images[idx]
        img = read_image(info["path"])
        gb = coco.boxes.get(info["id"], np.zeros((0, 4), np.float32)).astype(np.float64)
        for si, (scale, vrange) in enumerate(zip(ch["scales"], ch["valid_ranges"])):
            f = scale_factor(info["height"], info["width"], scale)
            boxes, scores, _, _ = detect_resized(model, img, f, config, mc["score_threshold"], 100)
            if len(boxes) == 0:
                continue
            fp = valid_range_mask(boxes, vrange)
            if len(gb):
                fp &= box_iou_np(boxes.astype(np.float64), gb).max(axis=1) < mc["iou_threshold"]
            rh, rw = resized_image_size(info["height"], info["width"], f)
            negatives += negative_chips(idx, boxes[fp] * f, si, f, (rh, rw), positives, ch["chip_size"],
                                        ch["grid_stride"], mc["max_chips_per_image_scale"])
    model.train(was_training)
    return negatives


# ----------------------------------------------------------------------------- training loop

def lr_at(step: int, progress: float, optim_cfg: dict) -> float:
    warm = min(1.0, (step + 1) / max(optim_cfg["warmup_steps"], 1))
    progress = min(max(progress, 0.0), 1.0)
    m = optim_cfg["min_lr_ratio"]
    return optim_cfg["lr"] * warm * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, optim_cfg: dict):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim_cfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    if optim_cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg["lr"], momentum=optim_cfg["momentum"], nesterov=True)
    return torch.optim.AdamW(groups, lr=optim_cfg["lr"])


def _loader(coco, chips, config, seed):
    ds = ChipDataset(coco, chips, config, augment=True)
    workers = config["schedule"]["num_workers"]
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=config["optim"]["batch_size"], shuffle=True, drop_last=len(ds) >= config["optim"]["batch_size"],
                      num_workers=workers, collate_fn=collate, persistent_workers=workers > 0,
                      generator=g)


def _chip_tuple(c: Chip):
    return (c.image_index, c.scale_index, c.factor, c.x0, c.y0, c.size, c.negative)


def train(config: dict, run_dir: Path, resume: bool = False, train_set=None, val_set=None,
          progress_bar: bool = True) -> dict:
    """Train per `config`; returns a summary (steps, losses, last validation, paths)."""
    t_process = time.time()
    sched = config["schedule"]
    torch.set_num_threads(sched["num_threads"])
    torch.manual_seed(config["seed"])
    random.seed(config["seed"])
    np.random.seed(config["seed"])
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path, final_path = run_dir / "last.pt", run_dir / "final.pt"

    coco = train_set if train_set is not None else load_split(config["data"]["train_split"])
    val = val_set if val_set is not None else (coco if train_set is not None
                                               else load_split(config["data"]["val_split"]))
    check_same_classes(coco, val)
    classes = list(coco.classes)
    model = build_model(config, len(classes))
    optimizer = make_optimizer(model, config["optim"])
    positives = build_positive_chips(coco, config)
    if not positives:
        raise ValueError(f"train split {coco.annotations_path}: no positive chips (no boxes in any valid range)")

    step, phase, train_elapsed, negatives, history = 0, 1, 0.0, [], []
    if resume and last_path.is_file():
        state = read_checkpoint(last_path)
        model.load_state_dict(state["model"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        step, phase, train_elapsed = state["step"], state["phase"], state["train_elapsed"]
        negatives = [Chip(*t) for t in state["negative_chips"]]
        history = state.get("history", [])
        print(f"resumed {last_path} at step {step}, phase {phase}", file=sys.stderr)

    budget_s = sched["time_budget_minutes"] * 60.0
    # Wall-clock schedule: training seconds available = budget - set-up so far - final reserve.
    setup_s = time.time() - t_process
    train_budget = max(budget_s - setup_s - sched["final_reserve_minutes"] * 60.0, 1.0)
    if resume:
        train_budget = max(budget_s - sched["final_reserve_minutes"] * 60.0, train_elapsed + 1.0)
    max_steps = sched["max_steps"] or None
    print(f"{len(coco.images)} train images, {len(positives)} positive chips "
          f"(per scale: {[sum(c.scale_index == s for c in positives) for s in range(len(config['chips']['scales']))]}), "
          f"training budget {train_budget / 60:.1f} min", file=sys.stderr)

    def save(path, **extra):
        save_checkpoint(path, model, config, classes, step=step, phase=phase, train_elapsed=train_elapsed,
                        negative_chips=[_chip_tuple(c) for c in negatives], history=history, **extra)

    loader = _loader(coco, positives + negatives, config, config["seed"] + step)
    t_start = time.time() - train_elapsed
    last_ckpt = last_val = time.time()
    bar = None
    if progress_bar:
        from tqdm import tqdm
        bar = tqdm(total=max_steps, initial=step, dynamic_ncols=True, mininterval=5.0, file=sys.stderr)
    model.train()
    running, interval = {}, {}
    done = False
    while not done:
        for images, targets in loader:
            train_elapsed = time.time() - t_start
            progress = train_elapsed / train_budget
            if progress >= 1.0 or (max_steps is not None and step >= max_steps):
                done = True
                break
            if phase == 1 and config["mining"]["enabled"] and progress >= sched["phase1_fraction"] \
                    and max_steps is None:
                t0 = time.time()
                negatives = mine_negative_chips(model, coco, positives, config, config["seed"] + 1)
                phase = 2
                print(f"\nphase 2: mined {len(negatives)} negative chips in {time.time() - t0:.0f} s",
                      file=sys.stderr)
                history.append({"step": step, "event": "mining", "negative_chips": len(negatives),
                                "seconds": time.time() - t0})
                save(last_path, optimizer=optimizer.state_dict())
                loader = _loader(coco, positives + negatives, config, config["seed"] + step)
                break  # restart the epoch on the new chip set
            lr = lr_at(step, progress, config["optim"])
            for g in optimizer.param_groups:
                g["lr"] = lr
            outputs = model(images)
            losses = compute_losses(outputs, targets, config)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if config["optim"]["grad_clip_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config["optim"]["grad_clip_norm"])
            optimizer.step()
            step += 1
            for k, v in losses.items():
                v = float(v.detach())
                running[k] = running[k] * 0.95 + v * 0.05 if k in running else v
                interval[k] = interval.get(k, 0.0) + v
            interval["n"] = interval.get("n", 0) + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()} | {"lr": f"{lr:.1e}"}, refresh=False)
            if step % sched["log_every"] == 0:
                # Mean of the raw losses since the last log line.
                n = interval.pop("n")
                history.append({"step": step, "t": round(train_elapsed, 1), "lr": lr, "phase": phase,
                                **{k: round(v / n, 4) for k, v in interval.items()}})
                interval = {}
                print(json.dumps(history[-1]), file=sys.stderr, flush=True)
            now = time.time()
            if now - last_val >= sched["val_minutes"] * 60.0:
                metrics = quick_validate(model, val, config)
                history.append({"step": step, "event": "val", **metrics})
                print(f"\nval step {step}: " + json.dumps(metrics), file=sys.stderr, flush=True)
                last_val = time.time()
            if now - last_ckpt >= sched["checkpoint_minutes"] * 60.0:
                save(last_path, optimizer=optimizer.state_dict())
                last_ckpt = time.time()
    if bar is not None:
        bar.close()
    metrics = quick_validate(model, val, config)
    history.append({"step": step, "event": "final_val", **metrics})
    print(f"final step {step}: " + json.dumps(metrics), file=sys.stderr, flush=True)
    save(last_path, optimizer=optimizer.state_dict())
    save(final_path)
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    return {"steps": step, "final_val": metrics, "final": str(final_path), "last": str(last_path),
            "losses": running, "history": history, "minutes": (time.time() - t_process) / 60}


def load_user_sets(train_annotations, train_images=None, val_annotations=None, val_images=None):
    """(train CocoSet, val CocoSet) from the user's COCO files; without val_annotations the training
    set doubles as the validation set (said on stderr). ValueError when the two files' classes differ."""
    from model.data import load_coco
    train_set = load_coco(train_annotations, train_images)
    if val_annotations is None:
        print(f"no --val-annotations: validating on the training set {train_set.annotations_path}",
              file=sys.stderr)
        return train_set, train_set
    val_set = load_coco(val_annotations, val_images)
    check_same_classes(train_set, val_set)
    return train_set, val_set


def add_data_arguments(ap, train: bool = True, val: bool = True) -> None:
    """--train-annotations/--train-images and --val-annotations/--val-images (one spelling for
    model.train, model.focus_refit and model.evaluate)."""
    if train:
        ap.add_argument("--train-annotations", help="COCO JSON of your training images (default: the "
                        "generated synthetic train split)")
        ap.add_argument("--train-images", help="their folder (default: <annotations folder>/images)")
    if val:
        ap.add_argument("--val-annotations", help="COCO JSON of your validation images (default: the "
                        "generated val split; with --train-annotations: the training file)")
        ap.add_argument("--val-images", help="their folder (default: <annotations folder>/images)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="JSON overriding model/configs/default.json")
    ap.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    ap.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    ap.add_argument("--minutes", type=float, default=None, help="override schedule.time_budget_minutes")
    ap.add_argument("--max-steps", type=int, default=None, help="override schedule.max_steps (0: no limit)")
    add_data_arguments(ap)
    args = ap.parse_args(argv)
    if (args.train_images or args.val_annotations or args.val_images) and not args.train_annotations:
        ap.error("--train-images/--val-annotations/--val-images need --train-annotations")
    if args.val_images and not args.val_annotations:
        ap.error("--val-images needs --val-annotations")
    schedule = {}
    if args.minutes:
        schedule["time_budget_minutes"] = args.minutes
    if args.max_steps is not None:
        schedule["max_steps"] = args.max_steps
    config = load_config(args.config, {"schedule": schedule} if schedule else None)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / config["name"]
    train_set = val_set = None
    if args.train_annotations:
        try:
            train_set, val_set = load_user_sets(args.train_annotations, args.train_images, args.val_annotations,
                                                args.val_images)
        except (ValueError, FileNotFoundError) as e:
            ap.error(str(e))
    summary = train(config, run_dir, resume=args.resume, train_set=train_set, val_set=val_set)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
