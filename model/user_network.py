"""Your own detector: a PyTorch module named `module:factory` plus a weights file (a state_dict), checked
against docs/contract.md, optionally with the paper's focus head attached on one of its stride-16
feature maps (so a detector without a focus head gets AutoFocus after `python -m model.focus_refit
--network ...`). export/build_engine.py turns it, or an ONNX file with the contract's outputs, into a
bundle; docs/own_model.md is the user's guide.

The module: `factory(**factory_kwargs)` returns an nn.Module whose forward(image) takes the contract's
input (N, 3, H, W) and returns a dict {"scores", "ltrb", "focus"} (or a tuple in that order); "focus"
may be left out when a focus head is attached. To attach one, name a submodule (as
`dict(module.named_modules())` spells it, e.g. "neck.p4") whose output in that forward pass is a
stride-16 map (N, C, H/16, W/16): the head (3x3 conv, ReLU, 1x1 conv, softmax) reads it through a
forward hook, so the module needs no change.

The config (JSON, `--config`): "classes" (required: the names of the scores channels, in order) and
optionally "scales", "valid_ranges", "chip_params" (default: model/configs/default.json "inference"),
"mean_rgb", "std_rgb" (the normalisation the network was trained with; default ImageNet's) and
"factory_kwargs" (passed to the factory).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runtime.bundle import OUTPUT_NAMES

CONTRACT_STRIDES = {"scores": 8, "ltrb": 8, "focus": 16}
FOCUS_STRIDE = 16
REFIT_KIND = "autofocus_user_network_refit"  # a weights file written by model.focus_refit --network
CONFIG_KEYS = ("classes", "scales", "valid_ranges", "chip_params", "mean_rgb", "std_rgb", "factory_kwargs")
CHECK_SHAPE = (2, 3, 256, 320)  # H != W and batch 2: a transposed or batch-mixing output shows


class ContractError(ValueError):
    """The user's network does not meet docs/contract.md; the message names the output and the fix."""


# ------------------------------------------------------------------------------------------ loading

def import_factory(spec: str):
    """The callable named by "package.module:factory" (importable, the current folder first) or
    "path/to/file.py:factory"."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"--network: expected module:factory (e.g. my_pkg.detector:build), got {spec!r}")
    module_name, attr = spec.split(":")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"--network: no such file {path}")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"--network: cannot import {module_name!r} ({e}); run from the folder that holds "
                             "it or add that folder to PYTHONPATH") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--network: {module_name} has no callable {attr!r}")
    return factory


def read_weights(path) -> dict:
    """A weights file as a dict: either a plain state_dict (wrapped as {"model": state_dict}) or a dict
    with "model" (this project's checkpoints and refit files). Loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files raise many kinds of errors
        raise ValueError(f"--weights: {path} is not a readable state_dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        return state
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        return {"model": state["state_dict"]}
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return {"model": state}
    raise ValueError(f"--weights: {path} holds no state_dict (a dict of tensors, or a dict with 'model')")


def load_user_config(path) -> dict:
    """The user config (module docstring) checked, with the defaults filled in: {"classes", "input",
    "network", "inference", "factory_kwargs"} in the shapes export/ and model/focus_refit.py read."""
    from model.config import load_config
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: no such file {path}")
    try:
        user = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"--config: {path} is not valid JSON ({e})") from None
    if not isinstance(user, dict):
        raise ValueError(f"--config: {path} must hold a JSON object")
    unknown = sorted(set(user) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"--config: {path}: unknown key(s) {unknown} (known: {list(CONFIG_KEYS)})")
    classes = user.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"--config: {path}: 'classes' must be a non-empty list of names (the scores channels)")
    if len(set(classes)) != len(classes):
        raise ValueError(f"--config: {path}: 'classes' has duplicates {classes}")
    base = load_config()
    inference = dict(base["inference"])
    for key in ("scales", "valid_ranges", "chip_params"):
        if key in user:
            inference[key] = user[key]
    if "scales" in user:  # the shipped model's AutoFocus coarse scale belongs to its scales, not the user's
        inference.pop("coarse_scale", None)
    n = len(inference["scales"]) if isinstance(inference["scales"], list) else 0
    if n < 1 or not all(isinstance(s, list) and len(s) == 2 and all(isinstance(v, (int, float)) for v in s)
                        for s in inference["scales"]):
        raise ValueError(f"--config: {path}: 'scales' must be a list of [min_side, max_side]")
    if not isinstance(inference["valid_ranges"], list) or len(inference["valid_ranges"]) != n:
        raise ValueError(f"--config: {path}: 'valid_ranges' needs one [lo, hi] per scale ({n})")
    if not isinstance(inference["chip_params"], list) or len(inference["chip_params"]) != n - 1:
        raise ValueError(f"--config: {path}: 'chip_params' needs one {{threshold, dilation, min_size}} per "
                         f"transition between scales ({n - 1}); give it with 'scales'")
    inp = dict(base["input"])
    for key in ("mean_rgb", "std_rgb"):
        if key in user:
            if not (isinstance(user[key], list) and len(user[key]) == 3):
                raise ValueError(f"--config: {path}: {key!r} must be 3 numbers (R, G, B)")
            inp[key] = user[key]
    kwargs = user.get("factory_kwargs", {})
    if not isinstance(kwargs, dict):
        raise ValueError(f"--config: {path}: 'factory_kwargs' must be an object")
    return {"classes": list(classes), "input": inp, "inference": inference, "factory_kwargs": kwargs,
            "network": {"det_stride": 8, "focus_stride": FOCUS_STRIDE}, "focus_labels": base["focus_labels"]}


# ---------------------------------------------------------------------------------- the contract

def as_contract_dict(out, where: str = "the network") -> dict:
    """A forward's result as {name: tensor}: a dict keyed by the contract's names, or a tuple/list in
    their order."""
    if isinstance(out, dict):
        return dict(out)
    if isinstance(out, (tuple, list)):
        return dict(zip(OUTPUT_NAMES, out))
    raise ContractError(f"{where} returned {type(out).__name__}; expected a dict with {list(OUTPUT_NAMES)} "
                        "(docs/contract.md) or a tuple in that order")


def check_outputs(outputs: dict, input_shape, num_classes: int, where: str = "the network") -> None:
    """Raises ContractError naming the first output that breaks docs/contract.md: missing, not a 4-D
    float array, wrong batch, wrong channel count (scores: the number of classes, ltrb 4, focus 2),
    wrong stride (spatial size not H/8 x W/8, or H/16 x W/16 for focus), values out of range."""
    n, _, h, w = input_shape
    for name in OUTPUT_NAMES:
        if name not in outputs:
            hint = " (a detector without a focus head: refit one with `python -m model.focus_refit --network " \
                   "... --feature NAME`, docs/own_model.md)" if name == "focus" else ""
            raise ContractError(f"{where}: missing output {name!r}; it returned {sorted(outputs)}{hint}")
        a = outputs[name]
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        if a.ndim != 4 or a.dtype != np.float32:
            raise ContractError(f"{where}: output {name!r} must be a float32 (N, C, h, w) array, got "
                                f"{a.dtype} {a.shape}")
        want_c = {"scores": num_classes, "ltrb": 4, "focus": 2}[name]
        stride = CONTRACT_STRIDES[name]
        if a.shape[0] != n:
            raise ContractError(f"{where}: output {name!r} has batch {a.shape[0]} for an input batch of {n}")
        if a.shape[1] != want_c:
            what = f"the config's {num_classes} classes" if name == "scores" else "the contract"
            raise ContractError(f"{where}: output {name!r} has {a.shape[1]} channels; {what} need(s) {want_c}")
        if a.shape[2:] != (h // stride, w // stride):
            got = [h / a.shape[2] if a.shape[2] else math.inf, w / a.shape[3] if a.shape[3] else math.inf]
            raise ContractError(f"{where}: output {name!r} is {a.shape[2]}x{a.shape[3]} for a {h}x{w} input "
                                f"(stride {got[0]:g}x{got[1]:g}); the contract's stride is {stride}: expected "
                                f"{h // stride}x{w // stride}")
        if not np.isfinite(a).all():
            raise ContractError(f"{where}: output {name!r} holds NaN or inf")
        if name == "scores" and (a.min() < 0 or a.max() > 1):
            raise ContractError(f"{where}: output 'scores' must lie in [0, 1] (sigmoid), got {a.min():g}..{a.max():g}")
        if name == "ltrb" and a.min() < 0:
            raise ContractError(f"{where}: output 'ltrb' must be >= 0 (distances in pixels), got {a.min():g}")
        if name == "focus" and np.abs(a.sum(axis=1) - 1).max() > 1e-3:
            raise ContractError(f"{where}: output 'focus' must be a softmax over its 2 channels (sum 1)")


def contract_input(shape=CHECK_SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def check_module(module: nn.Module, num_classes: int, shape=CHECK_SHAPE) -> None:
    """check_outputs of a module on a random input of `shape`."""
    x = contract_input(shape)
    check_outputs(as_contract_dict(module(x), "network"), x.shape, num_classes, "network")


# ----------------------------------------------------------------------------- adapters and head

class UserDetector(nn.Module):
    """Adapts a user module to this project's deploy interface: forward(image, export=...) returns the
    contract dict (export/export_onnx.py wraps that)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def deploy(self):
        return self.eval()

    def forward(self, image, export=None):
        return as_contract_dict(self.detector(image))


class FocusHeadAttached(UserDetector):
    """A user detector plus the paper's FocusPixel head (3x3 conv, ReLU, 1x1 conv, softmax) on the
    output of its submodule `feature` (stride 16). Exposes focus_features / focus_logits / focus_conv
    / focus_out as model.network.AutoFocusNet does, so model/focus_refit.py refits it unchanged; the
    detector's own outputs are untouched (its "focus", if any, is replaced)."""

    def __init__(self, detector: nn.Module, feature: str, channels: int | None = None, width: int = 64):
        super().__init__(detector)
        modules = dict(detector.named_modules())
        if feature not in modules or feature == "":
            names = [k for k in modules if k][:40]
            raise ContractError(f"--feature: the network has no submodule {feature!r}; its submodules: {names}")
        self.feature = feature
        if channels is None:
            channels = self._probe_channels()
        self.focus_conv = nn.Conv2d(channels, width, 3, 1, 1)
        self.focus_out = nn.Conv2d(width, 2, 1)
        nn.init.kaiming_normal_(self.focus_conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.focus_conv.bias)
        nn.init.normal_(self.focus_out.weight, std=0.01)
        with torch.no_grad():
            self.focus_out.bias.copy_(torch.tensor([1.0, -1.0]))  # most cells are background

    def _run(self, image):
        """(the detector's outputs, the feature map) from one forward pass."""
        captured = []
        sub = self.detector.get_submodule(self.feature)
        handle = sub.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            out = self.detector(image)
        finally:
            handle.remove()
        if not captured:
            raise ContractError(f"--feature: submodule {self.feature!r} did not run in the forward pass")
        feat = captured[-1]
        if not isinstance(feat, torch.Tensor) or feat.dim() != 4:
            raise ContractError(f"--feature: submodule {self.feature!r} returns "
                                f"{type(feat).__name__}, not an (N, C, h, w) tensor")
        h, w = image.shape[-2:]
        if tuple(feat.shape[2:]) != (h // FOCUS_STRIDE, w // FOCUS_STRIDE):
            raise ContractError(f"--feature: submodule {self.feature!r} gives a {feat.shape[2]}x{feat.shape[3]} map "
                                f"for a {h}x{w} input; the focus head needs stride {FOCUS_STRIDE} "
                                f"({h // FOCUS_STRIDE}x{w // FOCUS_STRIDE})")
        return as_contract_dict(out), feat

    @torch.no_grad()
    def _probe_channels(self) -> int:
        was = self.detector.training
        self.detector.eval()
        _, feat = self._run(contract_input((1, 3, 64, 96)))
        self.detector.train(was)
        return int(feat.shape[1])

    def focus_features(self, image):
        return self._run(image)[1]

    def focus_logits(self, features):
        return self.focus_out(F.relu(self.focus_conv(features)))

    def forward(self, image, export=None):
        out, feat = self._run(image)
        out["focus"] = torch.softmax(self.focus_logits(feat), dim=1)
        return {name: out[name] for name in OUTPUT_NAMES}


def head_state(model: FocusHeadAttached) -> dict:
    return {k: v for k, v in model.state_dict().items() if k.startswith(("focus_conv.", "focus_out."))}


def load_user_network(spec: str, weights=None, factory_kwargs=None, feature: str | None = None) -> nn.Module:
    """The network to export or refit: UserDetector, or FocusHeadAttached when `feature` is given or the
    weights file is a refit (REFIT_KIND: it records the feature and the head's weights)."""
    state = read_weights(weights) if weights is not None else None
    detector = import_factory(spec)(**(factory_kwargs or {}))
    if not isinstance(detector, nn.Module):
        raise ValueError(f"--network: {spec}() returned {type(detector).__name__}, not a torch.nn.Module")
    if state is not None:
        try:
            detector.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ValueError(f"--weights: {weights} does not fit {spec}() ({e})") from e
    detector.eval()
    refit = state is not None and state.get("kind") == REFIT_KIND
    if refit and feature not in (None, state["feature"]):
        raise ValueError(f"--feature: {weights} holds a focus head refit on {state['feature']!r}, not {feature!r}")
    if refit:
        head = state["focus_head"]
        model = FocusHeadAttached(detector, state["feature"], channels=int(head["focus_conv.weight"].shape[1]),
                                  width=int(head["focus_conv.weight"].shape[0]))
        model.load_state_dict(head, strict=False)
        return model.eval()
    if feature is not None:
        return FocusHeadAttached(detector, feature).eval()
    return UserDetector(detector).eval()


def save_refit(path, model: FocusHeadAttached, spec: str, classes, config: dict, **extra) -> None:
    """A refit file: the detector's weights unchanged, the feature's name and the new head's weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"version": 1, "kind": REFIT_KIND, "network": spec, "feature": model.feature,
             "model": model.detector.state_dict(), "focus_head": head_state(model), "classes": list(classes),
             "config": config, **extra}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
