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

from model.labels import FOCUS_IGNORE, focus_labels, focus_positive_spans
from model.network import FOCUS_FEATURES, focus_input_channels
from model.checkpoint import load_model, read_checkpoint, save_checkpoint
from model.data import load_coco, read_image
from model.train import load_split

DEFAULT_CHECKPOINT = Path("runs/default/final.pt")  # what `python -m model.train` writes
DEFAULT_OUT = Path("runs/default/final_refit.pt")
RECALL = 0.95
FOCUS_PREFIXES = ("focus_conv.", "focus_out.")  # the head's weights: the only ones refit


def inference_input(image_bgr: np.ndarray, factor: float, config: dict) -> tuple[torch.Tensor, tuple]:
    """The whole image as the runtime feeds it at `factor`: (1, 3, H32, W32) and its real (h, w)."""
    h, w = image_bgr.shape[:2]
    size = resized_image_size(h, w, factor)
    inp = config["input"]
    shape = (padded_length(size[0], inp["size_divisor"]), padded_length(size[1], inp["size_divisor"]))
    x = ops.crop_resize(image_bgr, np.array([[0, 0, w, h]], np.float32), np.array([factor], np.float32),
                        shape, inp["mean_rgb"], inp["std_rgb"], bgr_to_rgb=True)
    return torch.as_tensor(x), size


def map_labels(boxes_original: np.ndarray, factor: float, size: tuple, padded_cells: tuple, config: dict) -> np.ndarray:
    """FocusPixel labels of the resized image, padded with FOCUS_IGNORE to the padded input's cells."""
    fl, stride = config["focus_labels"], config["network"]["focus_stride"]
    labels = focus_labels(boxes_original * np.float32(factor), size, stride, fl["a"], fl["b"], fl["c"])
    out = np.full(padded_cells, FOCUS_IGNORE, np.int64)
    out[:labels.shape[0], :labels.shape[1]] = labels
    return out


def map_objects(boxes_original: np.ndarray, factor: float, size: tuple, config: dict) -> np.ndarray:
    """The cell spans (P, 4) [y0, y1, x0, x1) of the resized image's FocusPixel-positive objects."""
    fl, stride = config["focus_labels"], config["network"]["focus_stride"]
    return focus_positive_spans(boxes_original * np.float32(factor), size, stride, fl["a"], fl["b"])


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
def collect(model, coco, config: dict, indices, balance: float = 0.0, progress: bool = True) -> list[dict]:
    """Per coarse scale (every inference scale but the last): the images' stride-16 features (float16),
    labels, loss weights and positive objects ((P, 5) [map, y0, y1, x0, x1)), each map padded to the
    largest map of that scale (features 0, labels ignored)."""
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
            per_scale[s]["features"].append(feats.to(torch.float16))
            per_scale[s]["labels"].append(torch.from_numpy(map_labels(boxes, f, size, tuple(feats.shape[1:]), config)))
            spans = map_objects(boxes, f, size, config)
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


def _head_state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(FOCUS_PREFIXES)}


def refit(model, train: list[dict], held: list[dict], epochs: int, minutes: float, lr: float = 1e-3,
          batch: int = 16, seed: int = 0, progress: bool = True) -> dict:
    """Adam on the weighted focus cross-entropy of every coarse scale, training model.focus_conv and
    model.focus_out in place (nothing else gets a gradient); leaves them at the epoch (0 = as given)
    with the lowest summed held-out coverage at RECALL. Returns the history."""
    torch.manual_seed(seed)
    head = model.focus_logits
    start_cov = coverage_at_recall(head, held)
    best = (sum(start_cov), _head_state(model), 0)
    history = {"epoch0_coverage": start_cov, "epochs": []}
    params = [p for m in (model.focus_conv, model.focus_out) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
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
            ce = F.cross_entropy(head(x), y.clamp(min=0), reduction="none")
            loss = (ce * w).sum() / w.sum().clamp(min=1e-6)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            step += 1
        for d in train:
            d["perm"] = torch.randperm(len(d["labels"]))
        cov = coverage_at_recall(head, held)
        history["epochs"].append({"epoch": epoch, "loss": loss_sum / len(order), "coverage": cov})
        if progress:
            print(f"  epoch {epoch}: loss {loss_sum / len(order):.4f}, held-out coverage at {RECALL:.0%} recall "
                  + " / ".join(f"{c:.3f}" for c in cov), file=sys.stderr)
        if sum(cov) < best[0]:
            best = (sum(cov), _head_state(model), epoch)
        if time.time() > deadline:
            break
    model.load_state_dict(best[1], strict=False)
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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = p.parse_args(argv)
    if not 0 < args.holdout < 1:
        p.error(f"--holdout: expected a fraction in (0, 1), got {args.holdout}")
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
    coco = load_coco(args.annotations, args.train_images) if args.annotations \
        else load_split(config["data"]["train_split"])
    t0 = time.time()
    history, n, n_held = _collect_and_refit(p, args, model, coco, config)
    state = read_checkpoint(args.checkpoint)
    extra = {k: v for k, v in state.items() if k not in ("version", "model", "config", "classes")}
    extra["focus_refit"] = _record(args, argv, history, n, n_held, t0, source=str(args.checkpoint),
                                   focus_features=model.focus_features_kind)
    if "focus_refit" in state:  # a refit of a refit keeps the earlier record
        extra["focus_refit"]["previous"] = state["focus_refit"]
    config = {k: v for k, v in config.items() if k != "classes"}
    save_checkpoint(Path(args.out), model, config, state["classes"], **extra)
    _report(history, args.out)
    return 0


def _collect_and_refit(p, args, model, coco, config):
    """Features and labels of the first --images images (the last --holdout of them held out), then the
    refit; returns (history, images, held out)."""
    n = len(coco.images) if args.images <= 0 else min(args.images, len(coco.images))
    n_held = max(1, int(round(n * args.holdout)))
    if n - n_held < 1:
        p.error(f"--images: {n} images leave none to train on after holding out {n_held}")
    t0 = time.time()
    print(f"features of {n} training images at {len(config['inference']['scales']) - 1} coarse scales",
          file=sys.stderr)
    train = collect(model, coco, config, range(n - n_held), args.balance, progress=not args.quiet)
    held = collect(model, coco, config, range(n - n_held, n), args.balance, progress=not args.quiet)
    for d in train:
        d["perm"] = torch.randperm(len(d["labels"]))
    print(f"  {time.time() - t0:.0f} s", file=sys.stderr)
    return refit(model, train, held, args.epochs, args.minutes, args.lr, progress=not args.quiet), n, n_held


def _record(args, argv, history, n, n_held, t0, **more) -> dict:
    return {"images": n, "held_out": n_held, "epochs_run": len(history["epochs"]),
            "best_epoch": history["best_epoch"], "lr": args.lr, "balance": args.balance,
            "held_out_coverage_at_recall": {"recall": RECALL, "before": history["epoch0_coverage"],
                                            "after": history["best_coverage"]},
            "minutes": (time.time() - t0) / 60.0, **more,
            "command": " ".join(["python -m model.focus_refit", *(sys.argv[1:] if argv is None else argv)])}


def _report(history, out) -> None:
    print(f"held-out coverage at {RECALL:.0%} recall of positive objects, per coarse scale: "
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
    _report(history, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
