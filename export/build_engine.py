"""Checkpoint -> deployable bundle (docs: docs/design.md "bundle"; schema: runtime/bundle.py).

    python export/build_engine.py                     # model/checkpoints/default.pt -> bundles/default/
    python export/build_engine.py --random-init --out /tmp/b      # no trained model needed
    python export/build_engine.py --precision fp16 --max-batch 4 --workspace 4096
    python export/build_engine.py --network my_pkg.det:build --weights det.pt --config my.json --out bundles/mine
    python export/build_engine.py --onnx det.onnx --config my.json --out bundles/mine   (docs/own_model.md)

Steps: load the network; export model.onnx (fp32) and check it against PyTorch under onnxruntime
(max abs error <= 1e-4 per output); convert to model_fp16.onnx (fp32 I/O) and check it with the fp16
bar; torch.export to model.pt2 and check its round trip; build a TensorRT engine with one
optimization profile per chip bucket where TensorRT and a GPU exist; write bundle.json with the
checksums of every artefact. The bundle is assembled in a temporary folder next to --out and moved
into place only when every step passed, so a failed build never leaves a half bundle behind; the move
(replace_folder) keeps the previous bundle until the new one is in place.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from export import buckets as bucket_rules
from export import export_onnx as exporter
from runtime.backends.tensorrt import tensorrt_unavailable_reason
from runtime.bundle import CASCADE_KEYS, Bundle, default_input, load_bundle, output_contract, write_bundle
from runtime.packing import DEFAULT_GUTTER, default_canvases

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "model" / "checkpoints" / "default.pt"
DEFAULT_OUT = REPO_ROOT / "bundles" / "default"
PRECISIONS = ("fp32", "fp16", "int8")


def load_network(checkpoint=DEFAULT_CHECKPOINT, random_init: bool = False, seed: int = 0):
    """(model in deploy mode, config dict with "classes"). random_init: the default configuration's
    network with random weights (seeded), for tests and before a trained model exists."""
    import torch
    if random_init:
        from model.config import default_config
        from model.network import build_model
        config = default_config()
        if "classes" not in config:
            try:
                from model.synth import CLASSES
                config["classes"] = list(CLASSES)
            except ImportError:
                config["classes"] = ["object"]
        torch.manual_seed(seed)
        return build_model(config, len(config["classes"])).deploy(), config
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"checkpoint: {checkpoint} does not exist; train one (`python -m model.train`, then copy "
            f"runs/default/final.pt to {DEFAULT_CHECKPOINT}), pass --checkpoint PATH, or use --random-init")
    from model.checkpoint import load_model
    model, config = load_model(checkpoint)  # raises ValueError naming the file when it is unreadable
    return model.deploy(), config


def cascade_parameters(config: dict, inference: dict | None = None) -> dict:
    """Bundle fields from the model configuration: input normalisation and strides where it sets them
    (the runtime's conventions otherwise), and the cascade's parameters (runtime.bundle.CASCADE_KEYS,
    which have no default in the runtime) from its "inference" section."""
    fields = {}
    inp = config.get("input", {})
    if "mean_rgb" in inp and "std_rgb" in inp:
        fields["input"] = default_input(inp["mean_rgb"], inp["std_rgb"], inp.get("size_divisor", 32))
    net = config.get("network", {})
    if "det_stride" in net and "focus_stride" in net:
        fields["strides"] = {"detection": int(net["det_stride"]), "focus": int(net["focus_stride"])}
    from model.network import transition_focus_channels
    channels = transition_focus_channels(net)
    if channels:  # a focus head per transition (model/network.py), each in a channel of "focus"
        fields["focus_channels"] = channels
        fields["output_contract"] = output_contract(max(channels) + 1)
    # Inference parameters are not training parameters: they come from the repository's current
    # model/configs/default.json "inference" section (same names as the bundle), not the checkpoint's;
    # a user network's come from its config (model/user_network.py).
    if inference is None:
        from model.config import load_config
        inference = load_config()["inference"]
    for key in CASCADE_KEYS:
        fields[key] = inference[key]
    if inference.get("coarse_scale") is not None:  # optional: AutoFocus's scale 1 where it is not scales[0]
        fields["coarse_scale"] = inference["coarse_scale"]
    return fields


def parse_buckets(text: str | None, scales, chip_params, coarse_scale=None) -> list[tuple[int, int]]:
    """--buckets: None/"default" -> the default set for these scales (and AutoFocus's coarse_scale);
    else "HxW,HxW,..." (multiples of 32)."""
    if text is None or text == "default":
        return bucket_rules.default_buckets(scales, chip_params, coarse_scale)
    out = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--buckets: expected HxW,HxW,... (e.g. 512x512,800x1280), got {item!r}") from None
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise ValueError(f"--buckets: {item} must have positive sides that are multiples of 32")
        out.append((h, w))
    return sorted(set(out), key=lambda b: (b[0] * b[1], b[0], b[1]))


def _check_build_options(precision: str, max_batch: int) -> None:
    if precision == "int8":
        raise ValueError("precision: int8 needs explicit quantization (calibrated QuantizeLinear/"
                         "DequantizeLinear nodes in the ONNX, e.g. from a Q/DQ-aware export); it is not "
                         "supported yet: use fp32 or fp16")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision: expected fp32 or fp16, got {precision!r}")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")


def build_bundle(checkpoint=DEFAULT_CHECKPOINT, out=DEFAULT_OUT, precision: str = "fp32", buckets=None,
                 max_batch: int = 8, workspace_mib: int = 2048, random_init: bool = False, seed: int = 0,
                 parity_shapes=exporter.PARITY_SHAPES, timing_cache=None, log=print) -> Bundle:
    """Runs every step (see the module docstring) and returns the Bundle as load_bundle reads it."""
    _check_build_options(precision, max_batch)
    start = time.perf_counter()
    log(f"[1/7] loading {'a randomly initialised network' if random_init else checkpoint} (0.0 s)")
    model, config = load_network(checkpoint, random_init, seed)
    source = {"checkpoint": None if random_init else str(Path(checkpoint).resolve()),
              "random_init": bool(random_init), "seed": seed if random_init else None}
    return _build(model, None, list(config["classes"]), cascade_parameters(config), source, out, precision,
                  buckets, max_batch, workspace_mib, parity_shapes, timing_cache, log, start)


def build_bundle_from_network(network: str, weights, config_path, out, precision: str = "fp32", buckets=None,
                              max_batch: int = 8, workspace_mib: int = 2048, parity_shapes=exporter.PARITY_SHAPES,
                              timing_cache=None, log=print) -> Bundle:
    """Your PyTorch detector (model/user_network.py: module:factory + weights, and a refit file's focus
    head where the weights file is one) checked against docs/contract.md, then the same steps."""
    from model import user_network as un
    _check_build_options(precision, max_batch)
    start = time.perf_counter()
    log(f"[1/7] loading {network} with {weights} (0.0 s)")
    user = un.load_user_config(config_path)
    model = un.load_user_network(network, weights, user["factory_kwargs"])
    un.check_module(model, len(user["classes"]))
    source = {"network": network, "weights": None if weights is None else str(Path(weights).resolve()),
              "config": str(Path(config_path).resolve()),
              "focus_head": getattr(model, "feature", None)}
    return _build(model, None, user["classes"], cascade_parameters(user, user["inference"]), source, out,
                  precision, buckets, max_batch, workspace_mib, parity_shapes, timing_cache, log, start)


def build_bundle_from_onnx(onnx_path, config_path, out, precision: str = "fp32", buckets=None, max_batch: int = 8,
                           workspace_mib: int = 2048, parity_shapes=exporter.PARITY_SHAPES, timing_cache=None,
                           log=print) -> Bundle:
    """An ONNX file with the contract's input and outputs (dynamic batch, height and width), checked
    under onnxruntime at the parity shapes; no model.pt2 (the torch backend needs a PyTorch module)."""
    from model import user_network as un
    _check_build_options(precision, max_batch)
    start = time.perf_counter()
    log(f"[1/7] loading {onnx_path} (0.0 s)")
    user = un.load_user_config(config_path)
    onnx_path = Path(onnx_path)
    exporter.check_onnx_contract(onnx_path, len(user["classes"]), parity_shapes)
    source = {"onnx": str(onnx_path.resolve()), "config": str(Path(config_path).resolve())}
    return _build(None, onnx_path, user["classes"], cascade_parameters(user, user["inference"]), source, out,
                  precision, buckets, max_batch, workspace_mib, parity_shapes, timing_cache, log, start)


def _build(model, onnx_source, classes, params, source: dict, out, precision, buckets, max_batch, workspace_mib,
           parity_shapes, timing_cache, log, start) -> Bundle:
    """Steps 2-7 for a PyTorch module (exported and checked against it) or a given ONNX file (copied;
    its fp16 copy checked against it)."""
    out = Path(out)
    steps = 7

    def step(i, text):
        log(f"[{i}/{steps}] {text} ({time.perf_counter() - start:.1f} s)")

    scales, chip_params, coarse = params["scales"], params["chip_params"], params.get("coarse_scale")
    bucket_list = parse_buckets(buckets, scales, chip_params, coarse) if not isinstance(buckets, (list, tuple)) \
        else parse_buckets(",".join(f"{h}x{w}" for h, w in buckets), scales, chip_params)
    batches = bucket_rules.max_batch_per_bucket(bucket_list, max_batch)

    restore_interrupted(out)
    work = out.parent / f".{out.name}.building"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        if model is not None:
            step(2, "exporting model.onnx (dynamic batch/height/width)")
            exporter.export_onnx(model, work / "model.onnx")
            step(3, f"checking model.onnx against PyTorch on {len(parity_shapes)} shapes (onnxruntime CPU)")
            parity = {"onnx_fp32": exporter.check_parity(model, work / "model.onnx", parity_shapes)}
            log(f"      max error (ltrb relative to max(1, |ltrb|)): {_fmt(parity['onnx_fp32'])}")
        else:
            step(2, f"copying {onnx_source} to model.onnx")
            shutil.copyfile(onnx_source, work / "model.onnx")
            step(3, "no PyTorch module to check model.onnx against: checked against docs/contract.md")
            parity = {}
        step(4, "converting to model_fp16.onnx (fp32 I/O) and checking it")
        exporter.export_onnx_fp16(work / "model.onnx", work / "model_fp16.onnx")
        if model is not None:
            parity["onnx_fp16"] = exporter.check_fp16_parity(model, work / "model_fp16.onnx", parity_shapes)
        else:
            parity["onnx_fp16"] = exporter.check_fp16_against_onnx(work / "model.onnx", work / "model_fp16.onnx",
                                                                   parity_shapes)
        log(f"      max error (ltrb relative): {_fmt(parity['onnx_fp16'])}")
        if model is not None:
            step(5, "torch.export to model.pt2 and checking its round trip")
            exporter.export_torch_program(model, work / "model.pt2")
            parity["torch_program"] = exporter.check_torch_program_parity(model, work / "model.pt2",
                                                                          parity_shapes[:2])
        else:
            step(5, "no model.pt2 from an ONNX file (the torch backend needs a PyTorch module)")
        step(6, "TensorRT engine")
        engines, versions = [], {}
        reason = tensorrt_unavailable_reason()
        if reason is None:
            from export import tensorrt_build
            plan = f"model_{precision}.plan"
            onnx_file = work / ("model_fp16.onnx" if precision == "fp16" else "model.onnx")
            import tensorrt
            cache = Path(timing_cache) if timing_cache is not None else tensorrt_build.timing_cache_file(
                out.parent, tensorrt_build.gpu_name(), tensorrt.__version__)
            info = tensorrt_build.build_engine(onnx_file, work / plan, bucket_list, batches, workspace_mib,
                                               cache, log=log)
            tensorrt_build.check_plan(work / plan)
            engines.append({"file": plan, "precision": precision, "onnx": onnx_file.name, **info})
            versions["tensorrt"] = info["tensorrt"]
        else:
            log(f"      no TensorRT engine built: {reason} (the bundle runs with onnxruntime or torch)")
        step(7, "writing bundle.json")
        sizes = bucket_rules.rule_sizes(scales, chip_params, coarse_scale=coarse)
        build = {**source,
                 "buckets": "explicit" if buckets not in (None, "default") else "default",
                 # Waste over a uniform grid of the chip sizes the rules allow (pessimistic: real chips
                 # cluster near the minimum size; see export/buckets.py for the ground-truth figure).
                 "padding_waste_uniform_chip_grid": round(bucket_rules.padding_waste(sizes, bucket_list), 4),
                 "seconds": None, "gpu": engines[0]["gpu"] if engines else None}
        build["seconds"] = round(time.perf_counter() - start, 1)
        # packing="canvas": per scale the two shapes that hold its whole image (buckets, so TensorRT profiles)
        canvases = {"gutter": DEFAULT_GUTTER, "shapes": default_canvases(scales, params.get("input", default_input())["size_divisor"])}
        write_bundle(work, classes=classes, buckets=bucket_list, max_batch=batches, precision=precision,
                     engines=engines, parity=parity, build=build, versions=versions, canvases=canvases, **params)
        load_bundle(work)  # what the runtime will do: fail here rather than there
        replace_folder(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    bundle = load_bundle(out)
    log(f"bundle written to {out} in {time.perf_counter() - start:.1f} s: {len(bucket_list)} buckets, "
        f"artefacts {', '.join(bundle.artefacts)}")
    return bundle


def _previous(target: Path) -> Path:
    return target.parent / f".{target.name}.previous"


def replace_folder(new, target) -> None:
    """Puts folder `new` in place of `target` with two renames beside it (target -> .target.previous,
    new -> target), so that a failure at any point leaves a usable target: a failed first rename
    changes nothing, a failed second one renames the previous bundle back. The previous one is deleted
    only once the new one is in place."""
    new, target = Path(new), Path(target)
    previous = _previous(target)
    if previous.exists():
        shutil.rmtree(previous)
    had_target = target.exists()
    if had_target:
        os.replace(target, previous)
    try:
        os.replace(new, target)
    except BaseException:
        if had_target and not target.exists():
            os.replace(previous, target)
        raise
    if had_target:
        shutil.rmtree(previous, ignore_errors=True)


def restore_interrupted(target) -> None:
    """A build killed between replace_folder's two renames leaves only .target.previous: put it back."""
    target = Path(target)
    previous = _previous(target)
    if previous.exists() and not target.exists():
        os.replace(previous, target)


def _fmt(report: dict) -> str:
    return ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in report.items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python export/build_engine.py",
                                description="Build the deployable bundle (ONNX, fp16 ONNX, model.pt2, "
                                            "TensorRT engines where possible, bundle.json).")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="trained weights (model.train)")
    p.add_argument("--network", help="your PyTorch detector as module:factory (docs/own_model.md), with "
                   "--weights and --config")
    p.add_argument("--weights", type=Path, help="--network's state_dict, or a refit file from "
                   "`python -m model.focus_refit --network ...`")
    p.add_argument("--onnx", type=Path, help="your detector as an ONNX file with the contract's outputs "
                   "(docs/contract.md), with --config")
    p.add_argument("--config", type=Path, help="--network's or --onnx's JSON config: classes, scales, valid "
                   "ranges (docs/own_model.md)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="bundle folder (replaced when the build succeeds)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="engine precision (int8: not yet)")
    p.add_argument("--buckets", default="default", help='"default" or HxW,HxW,... chip buckets')
    p.add_argument("--max-batch", type=int, default=8,
                   help="largest batch of a 512x512 bucket; bigger buckets get proportionally fewer (>= 1)")
    p.add_argument("--workspace", type=int, default=2048, help="TensorRT workspace limit in MiB")
    p.add_argument("--timing-cache", type=Path, default=None, help="default: <out>/../timing_cache_<GPU>_trt<version>.bin")
    p.add_argument("--random-init", action="store_true", help="random weights instead of a checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    args = p.parse_args(argv)
    if args.network and args.onnx:
        p.error("--network and --onnx: give one")
    if (args.network or args.onnx) and args.config is None:
        p.error("--network/--onnx need --config (classes, scales: docs/own_model.md)")
    if (args.weights or args.config) and not (args.network or args.onnx):
        p.error("--weights/--config go with --network or --onnx")
    if (args.network or args.onnx) and (args.random_init or args.checkpoint != DEFAULT_CHECKPOINT):
        p.error("--checkpoint/--random-init are for this project's network, not --network/--onnx")
    common = dict(precision=args.precision, buckets=args.buckets, max_batch=args.max_batch,
                  workspace_mib=args.workspace, timing_cache=args.timing_cache)
    try:
        if args.network:
            build_bundle_from_network(args.network, args.weights, args.config, args.out, **common)
        elif args.onnx:
            build_bundle_from_onnx(args.onnx, args.config, args.out, **common)
        else:
            build_bundle(args.checkpoint, args.out, args.precision, args.buckets, args.max_batch, args.workspace,
                         args.random_init, args.seed, timing_cache=args.timing_cache)
    except (ValueError, FileNotFoundError, RuntimeError, AssertionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
