"""Refit the FocusPixel head on the inputs it sees at inference, with the rest of the network frozen.

    python -m model.focus_refit                  # runs/default/final.pt -> runs/default/final_refit.pt
    python -m model.focus_refit --checkpoint my_run/final.pt --out my.pt --minutes 10 \
        --train-annotations my/train.json --train-images my/images      # your COCO data
    python -m model.focus_refit --network my_pkg.det:build --weights det.pt --feature neck.p4 \
        --config my.json --train-annotations my/train.json --out refit.pt  # your detector (docs/own_model.md)

The shipped model/checkpoints/default.pt is the jointly trained model after this refit (its
"focus_refit" entry records how).

Why: in SNIPER training the focus head gets one loss term among three, on 512-px chips; at inference it
decides where the finer scales run, on the whole image at scale 1 and on large chips at scale 2. How
well it ranks cells decides how many pixels AutoFocus needs for a given recall: with ground-truth focus
maps the cascade ran about half the pixels it did with the jointly trained head, for the same AP. With
the trunk frozen, the stride-16 features of every training image at every scale that makes chips are
computed once, and the head (the paper's 3x3 conv, ReLU, 1x1 conv; 37 k weights) is trained on them for
many epochs in minutes. The detection outputs do not change at all: only `focus_conv` and `focus_out`.

Labels are the paper's FocusPixel labels (config "focus_labels": a, b, c) of the whole resized image,
made as at inference: the image resized by ops.crop_resize with the inference scale's factor (config
"inference" scales), padded to 32; padding cells are ignored. The loss is object-balanced (--balance 1):
the plain cross-entropy lets a 16-cell object outweigh a 1-cell one sixteen times, and the tiny objects
are the ones the finest scale exists for. The last `--holdout` of the training images are held out;
the epoch kept is the one whose maps, at the threshold that keeps 95% of the held-out positive objects,
cover the fewest cells (summed over the coarse scales).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see model/train.py

import numpy as np
import torch
import torch.nn.functional as F

from runtime import ops
from runtime.geometry import padded_length, resized_image_size, scale_factor

from model.focus_loss import FOCUS_LOSSES, object_cells, object_loss
from model.labels import FOCUS_IGNORE, focus_labels, focus_positive_spans, transition_bounds
from model.network import FOCUS_FEATURES, FocusHead, focus_input_channels
from model.checkpoint import load_model, read_checkpoint, save_checkpoint
from model.data import load_coco, read_image
from model.train import load_split

DEFAULT_CHECKPOINT = Path("runs/default/final.pt")  # what `python -m model.train` writes
DEFAULT_OUT = Path("runs/default/final_refit.pt")
RECALL = 0.95
HEAD_ARGUMENTS = ("width", "dilations", "reduce")  # of model.network.FocusHead, in a --transition-heads entry
FOCUS_WEIGHTS = ("focus_conv.", "focus_out.", "transition_heads.")  # state-dict prefixes of the focus heads


def inference_input(image_bgr: np.ndarray, factor: float, config: dict) -> tuple[torch.Tensor, tuple]:
    """The whole image as the runtime feeds it at `factor`: (1, 3, H32, W32) and its real (h, w)."""
    h, w = image_bgr.shape[:2]
    size = resized_image_size(h, w, factor)
    inp = config["input"]
    shape = (padded_length(size[0], inp["size_divisor"]), padded_length(size[1], inp["size_divisor"]))
    x = ops.crop_resize(image_bgr, np.array([[0, 0, w, h]], np.float32), np.array([factor], np.float32),
                        shape, inp["mean_rgb"], inp["std_rgb"], bgr_to_rgb=True)
    return torch.as_tensor(x), size


def label_bounds(config: dict, scale_index: int, factor: float, transitions: bool) -> tuple:
    """(a, b, c) of the FocusPixel labels at coarse scale `scale_index` (resized by `factor`): the
    paper's (config "focus_labels"), or with `transitions` those of that transition's own head
    (config "focus_labels" "transitions"[k]["b_original"]: model.labels.transition_bounds)."""
    fl = config["focus_labels"]
    if not transitions or fl["transitions"][scale_index] is None:
        return fl["a"], fl["b"], fl["c"]
    return transition_bounds(fl["transitions"][scale_index]["b_original"], factor, fl["a"], fl["b"], fl["c"])


def map_labels(boxes_original: np.ndarray, factor: float, size: tuple, padded_cells: tuple, config: dict,
               bounds: tuple | None = None) -> np.ndarray:
    """FocusPixel labels of the resized image, padded with FOCUS_IGNORE to the padded input's cells.
    bounds: (a, b, c) in the resized image's pixels (default: the paper's, config "focus_labels")."""
    fl, stride = config["focus_labels"], config["network"]["focus_stride"]
    a, b, c = bounds or (fl["a"], fl["b"], fl["c"])
    labels = focus_labels(boxes_original * np.float32(factor), size, stride, a, b, c)
    out = np.full(padded_cells, FOCUS_IGNORE, np.int64)
    out[:labels.shape[0], :labels.shape[1]] = labels
    return out


def map_objects(boxes_original: np.ndarray, factor: float, size: tuple, config: dict,
                bounds: tuple | None = None) -> np.ndarray:
    """The cell spans (P, 4) [y0, y1, x0, x1) of the resized image's FocusPixel-positive objects."""
    fl, stride = config["focus_labels"], config["network"]["focus_stride"]
    a, b, _ = bounds or (fl["a"], fl["b"], fl["c"])
    return focus_positive_spans(boxes_original * np.float32(factor), size, stride, a, b)


def cell_weights(labels: torch.Tensor, objects: torch.Tensor, balance: float) -> torch.Tensor:
    """Per-cell loss weights (N, H, W): 0 where ignored, 1 on negatives, and on positive cells
    n ** -balance for the smallest object covering the cell (n = its cells), scaled so that positive
    cells weigh 1 on average. balance 0 is plain cross-entropy; 1 gives every object the same total
    weight, so a one-cell object counts as much as a sixteen-cell one."""
    w = (labels != FOCUS_IGNORE).to(torch.float32)
    if balance == 0 or objects.numel() == 0:
        return w
    pos_w = torch.zeros_like(w)
    for i, y0, y1, x0, x1 in objects.tolist():
        v = float((y1 - y0) * (x1 - x0)) ** -balance
        region = pos_w[i, y0:y1, x0:x1]
        torch.maximum(region, torch.full_like(region, v), out=region)
    positive = labels == 1
    if positive.any():
        pos_w = pos_w / pos_w[positive].mean()
        w[positive] = pos_w[positive]
    return w


@torch.no_grad()
def collect(model, coco, config: dict, indices, balance: float = 0.0, progress: bool = True,
            transitions: bool = False) -> list[dict]:
    """Per coarse scale (every inference scale but the last): the images' stride-16 features (float16),
    labels, loss weights and positive objects ((P, 5) [map, y0, y1, x0, x1)), each map padded to the
    largest map of that scale (features 0, labels ignored). transitions: each scale labelled for its
    transition's own head (label_bounds) instead of by the paper's rule."""
    scales = config["inference"]["scales"][:-1]
    per_scale = [{"features": [], "labels": [], "objects": []} for _ in scales]
    start = time.time()
    for n, i in enumerate(indices):
        info = coco.images[i]
        image = read_image(info["path"])
        boxes = coco.boxes.get(info["id"], np.zeros((0, 4), np.float32)).astype(np.float32)
        for s, scale in enumerate(scales):
            f = scale_factor(image.shape[0], image.shape[1], scale)
            x, size = inference_input(image, f, config)
            feats = model.focus_features(x)[0]
            bounds = label_bounds(config, s, f, transitions)
            per_scale[s]["features"].append(feats.to(torch.float16))
            per_scale[s]["labels"].append(torch.from_numpy(map_labels(boxes, f, size, tuple(feats.shape[1:]), config,
                                                                      bounds)))
            spans = map_objects(boxes, f, size, config, bounds)
            per_scale[s]["objects"].append(np.concatenate([np.full((len(spans), 1), n), spans], 1))
        if progress and (n + 1) % 200 == 0:
            print(f"  features of {n + 1}/{len(indices)} images ({time.time() - start:.0f} s)", file=sys.stderr)
    out = []
    for p in per_scale:
        d = _pad_stack(p["features"], p["labels"])
        d["objects"] = torch.from_numpy(np.concatenate(p["objects"]).astype(np.int64)).reshape(-1, 5)
        d["weights"] = cell_weights(d["labels"], d["objects"], balance)
        out.append(d)
    return out


def _pad_stack(features: list, labels: list) -> dict:
    h = max(f.shape[1] for f in features)
    w = max(f.shape[2] for f in features)
    fx = torch.zeros((len(features), features[0].shape[0], h, w), dtype=torch.float16)
    lx = torch.full((len(labels), h, w), FOCUS_IGNORE, dtype=torch.int64)
    for k, (f, lab) in enumerate(zip(features, labels)):
        fx[k, :, :f.shape[1], :f.shape[2]] = f
        lx[k, :lab.shape[0], :lab.shape[1]] = lab
    return {"features": fx, "labels": lx}


@torch.no_grad()
def coverage_at_recall(head, data: list[dict], recall: float = RECALL, batch: int = 32) -> list[float]:
    """Per coarse scale: the fraction of labelled (non-ignored) cells at or above the threshold that
    keeps `recall` of the positive objects (an object is kept when one of its cells reaches the
    threshold: the chip grown around that cell holds it). Lower is better: fewer pixels for the same
    recall of objects."""
    out = []
    for d in data:
        probs = torch.cat([torch.softmax(head(d["features"][k:k + batch].float()), 1)[:, 1]
                           for k in range(0, len(d["labels"]), batch)])
        if len(d["objects"]) == 0:
            out.append(float("nan"))
            continue
        best = torch.stack([probs[i, y0:y1, x0:x1].max() for i, y0, y1, x0, x1 in d["objects"].tolist()])
        t = torch.quantile(best, 1.0 - recall)
        out.append(float((probs[d["labels"] != FOCUS_IGNORE] >= t).float().mean()))
    return out


def set_focus_features(model, config: dict, kind: str) -> None:
    """Points the focus head at other stride-16 features (model.network.FOCUS_FEATURES), in place, and
    records it in config["network"]: the 3x3 conv's weights on the features it already read are kept and
    those on the added channels start at zero, so the refit starts from the head as it was."""
    if kind not in FOCUS_FEATURES:
        raise ValueError(f"focus_features: expected one of {FOCUS_FEATURES}, got {kind!r}")
    old = model.focus_conv
    have = old.in_channels
    new = torch.nn.Conv2d(focus_input_channels(kind, config["network"]["fpn_width"]), old.out_channels, 3, 1, 1)
    if new.in_channels < have:
        raise ValueError(f"focus_features: {kind!r} reads fewer channels than the head's {have}; refit from "
                         f"the checkpoint it was trained with")
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :have] = old.weight
        new.bias.copy_(old.bias)
    model.focus_conv = new
    model.focus_features_kind = kind
    config["network"] = {**config["network"], "focus_features": kind}


def _head_state(modules) -> list:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


def refit(model, train: list[dict], held: list[dict], epochs: int, minutes: float, lr: float = 1e-3,
          batch: int = 16, seed: int = 0, progress: bool = True, head=None, loss: str = "cells",
          recall: float = RECALL) -> dict:
    """Adam on the given scales' data, training the paper's head (model.focus_conv and model.focus_out),
    or `head` (a module: features -> 2 logits, e.g. one of model.transition_heads), in place (nothing else
    gets a gradient); leaves it at the epoch (0 = as given) with the lowest summed held-out coverage at
    `recall`. loss: "cells", the weighted cross-entropy of every labelled cell; "objects", object_loss.
    Returns the history."""
    if loss not in FOCUS_LOSSES:
        raise ValueError(f"loss: expected one of {FOCUS_LOSSES}, got {loss!r}")
    torch.manual_seed(seed)
    modules = (model.focus_conv, model.focus_out) if head is None else (head,)
    head = model.focus_logits if head is None else head
    start_cov = coverage_at_recall(head, held, recall)
    best = (sum(start_cov), _head_state(modules), 0)
    history = {"epoch0_coverage": start_cov, "epochs": []}
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    if loss == "objects":
        for d in train:
            d.setdefault("cells", object_cells(d["objects"]))
    steps = [(s, k) for s, d in enumerate(train) for k in range(0, len(d["labels"]), batch)]
    total = epochs * len(steps)
    deadline = time.time() + 60.0 * minutes
    step = 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(steps)).tolist()
        loss_sum = 0.0
        for j in order:
            s, k = steps[j]
            perm = train[s]["perm"][k:k + batch]
            x, y, w = train[s]["features"][perm].float(), train[s]["labels"][perm], train[s]["weights"][perm]
            for group in opt.param_groups:  # cosine decay over the planned steps
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            logits = head(x)
            if loss == "objects":
                value = object_loss(logits, y, train[s]["cells"], perm)
            else:
                ce = F.cross_entropy(logits, y.clamp(min=0), reduction="none")
                value = (ce * w).sum() / w.sum().clamp(min=1e-6)
            opt.zero_grad()
            value.backward()
            opt.step()
            loss_sum += value.item()
            step += 1
        for d in train:
            d["perm"] = torch.randperm(len(d["labels"]))
        cov = coverage_at_recall(head, held, recall)
        history["epochs"].append({"epoch": epoch, "loss": loss_sum / len(order), "coverage": cov})
        if progress:
            print(f"  epoch {epoch}: loss {loss_sum / len(order):.4f}, held-out coverage at {recall:.0%} recall "
                  + " / ".join(f"{c:.3f}" for c in cov), file=sys.stderr)
        if sum(cov) < best[0]:
            best = (sum(cov), _head_state(modules), epoch)
        if time.time() > deadline:
            break
    for m, state in zip(modules, best[1]):
        m.load_state_dict(state)
    history["best_epoch"] = best[2]
    history["best_coverage"] = start_cov if best[2] == 0 else next(
        e["coverage"] for e in history["epochs"] if e["epoch"] == best[2])
    return history


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help=f"the trained detector (default {DEFAULT_CHECKPOINT})")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="checkpoint to write (same format, new focus head)")
    p.add_argument("--train-annotations", "--annotations", dest="annotations",
                   help="COCO JSON of the training images (default: the config's train split)")
    p.add_argument("--train-images", help="their folder (default: <annotations folder>/images)")
    p.add_argument("--images", type=int, default=0, help="use the first N training images (0: all)")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of them held out to pick the epoch")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--minutes", type=float, default=30.0, help="stop after the epoch that passes this")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", choices=FOCUS_LOSSES, default="cells",
                   help="cells: the cross-entropy of every labelled cell, object-balanced (--balance); objects: "
                        "each positive object's best cell (the one a chip grows around) and the negative cells")
    p.add_argument("--recall", type=float, default=RECALL,
                   help=f"the epoch kept covers the fewest held-out cells at this recall of positive objects "
                        f"(default {RECALL}); the cascade runs near 0.98-0.99")
    p.add_argument("--balance", type=float, default=1.0,
                   help="positive cells weigh n ** -balance (n: the object's cells); 0: plain cross-entropy")
    p.add_argument("--focus-features", choices=FOCUS_FEATURES,
                   help="what the head reads (default: as the checkpoint's): p4+p3max / p4+p3fold add the "
                        "stride-8 map max-pooled / folded onto the stride-16 cells (model/network.py)")
    p.add_argument("--network", help="your detector as module:factory (docs/own_model.md); with --weights and "
                   "--feature it gets a new focus head, refit here with the detector frozen")
    p.add_argument("--weights", help="--network's state_dict (or a refit file, to refit again)")
    p.add_argument("--feature", help="--network's submodule whose output is the stride-16 map the head reads")
    p.add_argument("--config", help="--network's JSON config (classes, scales, ...: docs/own_model.md); "
                   "default: classes from the COCO file, the default scales")
    p.add_argument("--transition-heads", metavar="JSON",
                   help="a focus head per transition (issue 21), refit each on its own coarse scale with its own "
                        "labels: a JSON file {\"heads\": [{\"b_original\": 75, \"width\": 32, \"dilations\": "
                        "[1, 2, 4, 8], \"reduce\": true, \"init\": \"random\" | \"paper\"}, ...]}, one entry "
                        "per transition (model/configs/transition_heads.json); the paper's head is kept as it is")
    p.add_argument("--transitions", help="with --transition-heads or a checkpoint that has them: which to refit, "
                   "e.g. 1 or 1,2 (default all); the others are kept from the checkpoint")
    p.add_argument("--head-from", action="append", metavar="K=CHECKPOINT", default=[],
                   help="no training: transition K's own head becomes CHECKPOINT's paper head (a refit of the same "
                        "trunk, e.g. with --loss objects), labelled by the paper's rule; the other transitions keep "
                        "theirs; repeatable")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = p.parse_args(argv)
    if not 0 < args.holdout < 1:
        p.error(f"--holdout: expected a fraction in (0, 1), got {args.holdout}")
    if not 0 < args.recall <= 1:
        p.error(f"--recall: expected a fraction in (0, 1], got {args.recall}")
    torch.set_num_threads(args.threads)
    if args.train_images and not args.annotations:
        p.error("--train-images needs --train-annotations")
    if args.network:
        return _refit_user_network(p, args, argv)
    if args.weights or args.feature or args.config:
        p.error("--weights/--feature/--config go with --network")
    model, config = load_model(args.checkpoint)
    if args.focus_features and args.focus_features != model.focus_features_kind:
        set_focus_features(model, config, args.focus_features)
    if args.head_from:  # (no training: no data read)
        return _heads_from(p, args, argv, model, config)
    coco = load_coco(args.annotations, args.train_images) if args.annotations \
        else load_split(config["data"]["train_split"])
    if args.transition_heads or args.transitions:
        return _refit_transitions(p, args, argv, model, coco, config)
    t0 = time.time()
    history, n, n_held = _collect_and_refit(p, args, model, coco, config)
    _save_with_record(args, model, config, "focus_refit", _record(
        args, argv, history, n, n_held, t0, source=str(args.checkpoint), focus_features=model.focus_features_kind))
    _report(history, args.out, args.recall)
    return 0


def _save_with_record(args, model, config: dict, key: str, record: dict) -> None:
    """--out: the --checkpoint's entries with the refit model and config, and `record` under `key` (a refit
    of a refit keeps the earlier record as its "previous")."""
    state = read_checkpoint(args.checkpoint)
    extra = {k: v for k, v in state.items() if k not in ("version", "model", "config", "classes")}
    if key in state:
        record["previous"] = state[key]
    extra[key] = record
    save_checkpoint(Path(args.out), model, {k: v for k, v in config.items() if k != "classes"}, state["classes"],
                    **extra)


def read_transition_heads(path, transitions: int, network: dict) -> list[dict]:
    """The --transition-heads file's entries, checked: one per transition, each with b_original > 0 and
    FocusHead's arguments; ValueError naming the file and the entry otherwise."""
    import json
    try:
        heads = json.loads(Path(path).read_text())["heads"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--transition-heads: {path} is not a JSON file with a \"heads\" list ({e})") from e
    if not isinstance(heads, list) or len(heads) != transitions:
        raise ValueError(f"--transition-heads: {path}: expected {transitions} heads (one per transition), "
                         f"got {len(heads) if isinstance(heads, list) else heads!r}")
    for k, h in enumerate(heads, 1):
        if h is None:  # no head of its own: the transition reads the paper's
            continue
        if not isinstance(h, dict) or not isinstance(h.get("b_original"), (int, float)) or h["b_original"] <= 0:
            raise ValueError(f"--transition-heads: {path}: head {k} needs \"b_original\" > 0 (px in the original image)")
        unknown = set(h) - {"b_original", "init", *HEAD_ARGUMENTS}
        if unknown or h.get("init", "random") not in ("random", "paper"):
            raise ValueError(f"--transition-heads: {path}: head {k}: unknown keys {sorted(unknown)} or init "
                             f"{h.get('init')!r} (expected random or paper)")
        if h.get("init") == "paper" and (h.get("reduce", True) or h.get("dilations", [1]) != [1]
                                         or h.get("width", 64) != network["focus_width"]):
            raise ValueError(f"--transition-heads: {path}: head {k}: init paper needs the paper's shape (reduce false, "
                             f"dilations [1], width {network['focus_width']})")
    return heads


def copy_paper_head(model, head) -> None:
    """The paper's head of `model` (3x3 conv, ReLU, 1x1 conv) into `head`, a FocusHead of the same shape."""
    with torch.no_grad():
        head.layers[0].load_state_dict(model.focus_conv.state_dict())
        head.layers[-1].load_state_dict(model.focus_out.state_dict())


def attach_transition_heads(model, config: dict, heads: list[dict]) -> None:
    """New per-transition heads on the model (in place), their specs in config["network"] and their label
    bounds in config["focus_labels"]["transitions"]; init "paper" copies the paper head's weights."""
    in_channels = model.focus_conv.in_channels
    built = [None if h is None else FocusHead(in_channels, **{k: v for k, v in h.items() if k in HEAD_ARGUMENTS})
             for h in heads]
    model.transition_specs = [None if m is None else m.spec for m in built]
    model.transition_heads = torch.nn.ModuleList(m for m in built if m is not None)
    for h, m in zip(heads, built):
        if h is not None and h.get("init") == "paper":
            copy_paper_head(model, m)
    config["network"] = {**config["network"], "transition_heads": model.transition_specs}
    config["focus_labels"] = {**config["focus_labels"], "transitions": [
        None if h is None else {"b_original": float(h["b_original"])} for h in heads]}


def _refit_transitions(p, args, argv, model, coco, config) -> int:
    """--transition-heads / --transitions: head k refit on coarse scale k's features with transition k's
    labels, picked by its own held-out coverage; the paper's head's coverage on the same labels is
    recorded beside it (the comparison the head is for)."""
    n_transitions = len(config["inference"]["scales"]) - 1
    try:
        if args.transition_heads:
            attach_transition_heads(model, config, read_transition_heads(args.transition_heads, n_transitions,
                                                                         config["network"]))
        elif not len(model.transition_heads):
            p.error("--transitions: the checkpoint has no transition heads; give --transition-heads")
    except ValueError as e:
        p.error(str(e))
    try:
        which = sorted({int(t) for t in args.transitions.split(",")}) if args.transitions \
            else list(range(1, n_transitions + 1))
    except ValueError:
        which = [0]  # named below
    if not set(which) <= set(range(1, n_transitions + 1)):
        p.error(f"--transitions: expected numbers in 1..{n_transitions}, got {args.transitions}")
    t0 = time.time()
    train, held, n, n_held = _collect_split(p, args, model, coco, config, transitions=True)
    records = {}
    for k in which:
        head = model.transition_head(k - 1)
        if head is None:
            print(f"transition {k}: no head of its own (the paper's serves it), not refit", file=sys.stderr)
            continue
        paper = coverage_at_recall(model.focus_logits, [held[k - 1]], args.recall)[0]
        print(f"transition {k}: head {head.spec}, paper head's held-out coverage {paper:.4f}", file=sys.stderr)
        history = refit(model, [train[k - 1]], [held[k - 1]], args.epochs, args.minutes, args.lr,
                        progress=not args.quiet, head=head, loss=args.loss, recall=args.recall)
        records[str(k)] = {"head": head.spec,
                           "b_original": (config["focus_labels"]["transitions"][k - 1] or {}).get("b_original"),
                           "paper_head_coverage": paper, "before": history["epoch0_coverage"][0],
                           "after": history["best_coverage"][0], "best_epoch": history["best_epoch"],
                           "epochs_run": len(history["epochs"])}
        print(f"transition {k}: held-out coverage at {args.recall:.0%} recall {records[str(k)]['after']:.4f} "
              f"(paper head {paper:.4f}; epoch {history['best_epoch']})", file=sys.stderr)
    _save_with_record(args, model, config, "transition_refit", {
        "images": n, "held_out": n_held, "lr": args.lr, "loss": args.loss, "balance": args.balance,
        "recall": args.recall,
        "transitions": records, "minutes": (time.time() - t0) / 60.0, "source": str(args.checkpoint),
        "command": _command(argv)})
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _heads_from(p, args, argv, model, config) -> int:
    """--head-from K=CHECKPOINT: transition K's own head is CHECKPOINT's paper head (the paper's shape and
    labels), which must sit on the same trunk (every weight outside the focus heads equal); the others keep
    the --checkpoint's heads. A head refit on both coarse scales can then serve only the one it helps."""
    n = len(config["inference"]["scales"]) - 1
    specs = list(model.transition_specs) or [None] * n
    heads = [model.transition_head(k) if k < len(model.transition_specs) else None for k in range(n)]
    labels = list(config["focus_labels"].get("transitions") or [None] * n)
    sources = {}
    trunk = {k: v for k, v in model.state_dict().items() if not k.startswith(FOCUS_WEIGHTS)}
    for entry in args.head_from:
        k, _, path = entry.partition("=")
        if not k.isdigit() or not 1 <= int(k) <= n or not path:
            p.error(f"--head-from: expected K=CHECKPOINT with K in 1..{n}, got {entry!r}")
        try:
            other, _ = load_model(path)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            p.error(f"--head-from: {path}: {e}")
        theirs = {k2: v for k2, v in other.state_dict().items() if not k2.startswith(FOCUS_WEIGHTS)}
        if theirs.keys() != trunk.keys() or any(not torch.equal(v, trunk[k2]) for k2, v in theirs.items()) \
                or other.focus_conv.in_channels != model.focus_conv.in_channels:
            p.error(f"--head-from: {path} is not a refit of --checkpoint's trunk (its weights outside the focus "
                    f"heads, or the features its head reads, differ)")
        head = FocusHead(model.focus_conv.in_channels, width=other.focus_conv.out_channels, dilations=[1],
                         reduce=False)
        copy_paper_head(other, head)
        i = int(k) - 1
        specs[i], heads[i], labels[i] = head.spec, head, None  # None: the paper's labels (label_bounds)
        record = read_checkpoint(path).get("focus_refit")
        sources[k] = {"checkpoint": str(path), "its_refit": record}
    model.transition_specs = specs
    model.transition_heads = torch.nn.ModuleList(h for h in heads if h is not None)
    config["network"] = {**config["network"], "transition_heads": specs}
    config["focus_labels"] = {**config["focus_labels"], "transitions": labels}
    _save_with_record(args, model, config, "transition_heads_from", {
        "heads": sources, "source": str(args.checkpoint),
        "command": _command(argv)})
    print(f"wrote {args.out}: transition heads {specs}", file=sys.stderr)
    return 0


def _collect_split(p, args, model, coco, config, transitions: bool = False):
    """Features and labels (collect) of the first --images images, the last --holdout of them held out;
    returns (train, held, images, held out)."""
    n = len(coco.images) if args.images <= 0 else min(args.images, len(coco.images))
    n_held = max(1, int(round(n * args.holdout)))
    if n - n_held < 1:
        p.error(f"--images: {n} images leave none to train on after holding out {n_held}")
    t0 = time.time()
    print(f"features of {n} training images at {len(config['inference']['scales']) - 1} coarse scales"
          + (", transition labels" if transitions else ""), file=sys.stderr)
    train = collect(model, coco, config, range(n - n_held), args.balance, not args.quiet, transitions)
    held = collect(model, coco, config, range(n - n_held, n), args.balance, not args.quiet, transitions)
    for d in train:
        d["perm"] = torch.randperm(len(d["labels"]))
    print(f"  {time.time() - t0:.0f} s", file=sys.stderr)
    return train, held, n, n_held


def _collect_and_refit(p, args, model, coco, config):
    """_collect_split, then the refit of the paper's head; returns (history, images, held out)."""
    train, held, n, n_held = _collect_split(p, args, model, coco, config)
    return refit(model, train, held, args.epochs, args.minutes, args.lr, progress=not args.quiet, loss=args.loss,
                 recall=args.recall), n, n_held


def _record(args, argv, history, n, n_held, t0, **more) -> dict:
    return {"images": n, "held_out": n_held, "epochs_run": len(history["epochs"]),
            "best_epoch": history["best_epoch"], "lr": args.lr, "loss": args.loss, "balance": args.balance,
            "held_out_coverage_at_recall": {"recall": args.recall, "before": history["epoch0_coverage"],
                                            "after": history["best_coverage"]},
            "minutes": (time.time() - t0) / 60.0, **more,
            "command": _command(argv)}


def _command(argv) -> str:
    """The command line to record in the checkpoint."""
    return " ".join(["python -m model.focus_refit", *(sys.argv[1:] if argv is None else argv)])


def _report(history, out, recall: float) -> None:
    print(f"held-out coverage at {recall:.0%} recall of positive objects, per coarse scale: "
          f"{' / '.join(f'{c:.3f}' for c in history['epoch0_coverage'])} before, "
          f"{' / '.join(f'{c:.3f}' for c in history['best_coverage'])} after (epoch {history['best_epoch']}); "
          f"wrote {out}")


def _refit_user_network(p, args, argv=None) -> int:
    """--network: the user's detector, frozen, with a new (or, from a refit file, the earlier) focus head
    on --feature, refit on the COCO data; writes a refit file (model.user_network.save_refit) that
    export/build_engine.py --network ... --weights <it> builds into a bundle."""
    from model import user_network as un
    if not args.annotations:
        p.error("--network needs --train-annotations (your COCO file)")
    if args.out == str(DEFAULT_OUT):
        p.error("--network needs --out (the refit file to write)")
    try:
        coco = load_coco(args.annotations, args.train_images)
        user = un.load_user_config(args.config) if args.config else None
        model = un.load_user_network(args.network, args.weights, user and user["factory_kwargs"], args.feature)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    if not isinstance(model, un.FocusHeadAttached):
        p.error("--network: name the stride-16 feature map the focus head reads with --feature")
    if user is None:
        from model.config import load_config
        base = load_config()
        user = {"classes": list(coco.classes), "input": base["input"], "inference": base["inference"],
                "network": {"det_stride": 8, "focus_stride": un.FOCUS_STRIDE}, "focus_labels": base["focus_labels"],
                "factory_kwargs": {}}
    model.requires_grad_(False)  # the detector stays frozen: refit() optimises the head's weights only
    for m in (model.focus_conv, model.focus_out):
        m.requires_grad_(True)
    t0 = time.time()
    history, n, n_held = _collect_and_refit(p, args, model, coco, user)
    record = _record(args, argv, history, n, n_held, t0, source=str(args.weights), feature=model.feature)
    config = {k: v for k, v in user.items() if k != "classes"}
    un.save_refit(args.out, model, args.network, user["classes"], config, focus_refit=record)
    _report(history, args.out, args.recall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
