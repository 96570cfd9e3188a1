"""AutoFocus detector: small fully-convolutional backbone, light FPN, anchor-free stride-8 head and the
paper's FocusPixel head on stride-16 features.

Export-friendly by construction: plain 3x3/1x1 convs, BatchNorm (eval mode at export), ReLU, nearest
upsampling and max-pool; no data-dependent shapes. The output contract is docs/contract.md:

    scores (N, C, H/8, W/8)  in [0, 1], non-peaks of a 3x3 window set to 0
    ltrb   (N, 4, H/8, W/8)  >= 0, distances in input pixels from the cell centre to the box sides
    focus  (N, 2 + T, H/16, W/16) channels 0-1: the paper's head's softmax (channel 1 = FocusPixel
           probability); then the FocusPixel probability of each of the T transition heads, in order
           (transition_focus_channels says which channel serves which transition; T = 0: the paper's only)

`forward()` returns these in deploy mode (`model.deploy()` or `forward(x, export=True)`); in training
mode it returns raw logits (`cls_logits`, `ltrb`, `focus_logits`) for the losses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from runtime.bundle import INPUT_NAME, OUTPUT_NAMES  # noqa: F401 (docs/contract.md's names)

SIZE_DIVISOR = 32
DET_STRIDE = 8
FOCUS_STRIDE = 16
# What the focus head can read (AutoFocusNet._focus_input), and its input width in FPN widths.
_FOCUS_INPUT_WIDTHS = {"p4": 1, "p4+p3max": 2, "p4+p3fold": 5}
FOCUS_FEATURES = tuple(_FOCUS_INPUT_WIDTHS)


def focus_input_channels(focus_features: str, fpn_width: int) -> int:
    return fpn_width * _FOCUS_INPUT_WIDTHS[focus_features]


def transition_focus_channels(network_config: dict) -> list[int]:
    """Per transition, the channel of the deployed "focus" output that serves it (forward(): channels
    0-1 the paper's softmax, then one per transition head, in order; a transition whose entry in
    "transition_heads" is null has no head of its own and reads the paper's, channel 1); [] without
    transition heads."""
    channels, nxt = [], 2
    for spec in network_config.get("transition_heads") or []:
        channels.append(1 if spec is None else nxt)
        nxt += spec is not None
    return channels


def conv_bn_relu(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Backbone(nn.Module):
    """Plain VGG-like stages; each stage halves the resolution once. Returns strides 8, 16, 32."""

    def __init__(self, widths: list[int], blocks: list[int]):
        super().__init__()
        if len(widths) != 5 or len(blocks) != 5:
            raise ValueError(f"widths and blocks: expected 5 stages (strides 2..32), got {widths}, {blocks}")
        stages, cin = [], 3
        for w, n in zip(widths, blocks):
            layers = [conv_bn_relu(cin, w, stride=2)]
            layers += [conv_bn_relu(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[2], feats[3], feats[4]


class FocusHead(nn.Module):
    """A focus head of one transition (issue 21): a 1x1 reduction to `width` channels, then a 3x3 conv
    per entry of `dilations` (each ReLU), then a 1x1 conv to two logits. dilations (1,) with no reduction
    is the paper's head; (1, 2, 4, 8) sees 31 x 31 cells, so that the positives for a cluster of small
    objects can form one region rather than scattered cells (the scale-1 map decides the budget)."""

    def __init__(self, in_channels: int, width: int = 64, dilations=(1,), reduce: bool = True):
        super().__init__()
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"dilations: expected positive ints, got {dilations!r}")
        self.spec = {"width": int(width), "dilations": [int(d) for d in dilations], "reduce": bool(reduce)}
        layers, cin = [], in_channels
        if reduce:
            layers += [nn.Conv2d(in_channels, width, 1), nn.ReLU(inplace=True)]
            cin = width
        for d in dilations:
            layers += [nn.Conv2d(cin, width, 3, 1, int(d), dilation=int(d)), nn.ReLU(inplace=True)]
            cin = width
        layers.append(nn.Conv2d(cin, 2, 1))
        self.layers = nn.Sequential(*layers)
        with torch.no_grad():  # most cells are background
            self.layers[-1].bias.copy_(torch.tensor([1.0, -1.0]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class AutoFocusNet(nn.Module):
    def __init__(self, num_classes: int, widths=(24, 32, 64, 96, 128), blocks=(1, 2, 2, 2, 2),
                 fpn_width: int = 64, head_width: int = 64, head_convs: int = 2, focus_width: int = 64,
                 ltrb_base: float = 8.0, prior_prob: float = 0.05, focus_features: str = "p4",
                 transition_heads=()):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        if focus_features not in FOCUS_FEATURES:
            raise ValueError(f"focus_features: expected one of {FOCUS_FEATURES}, got {focus_features!r}")
        self.focus_features_kind = focus_features
        self.num_classes = num_classes
        self.ltrb_base = float(ltrb_base)
        self.backbone = Backbone(list(widths), list(blocks))
        c3, c4, c5 = widths[2], widths[3], widths[4]
        self.lat5 = nn.Conv2d(c5, fpn_width, 1)
        self.lat4 = nn.Conv2d(c4, fpn_width, 1)
        self.lat3 = nn.Conv2d(c3, fpn_width, 1)
        self.smooth4 = conv_bn_relu(fpn_width, fpn_width)
        self.smooth3 = conv_bn_relu(fpn_width, fpn_width)
        self.head = nn.Sequential(*[conv_bn_relu(fpn_width if i == 0 else head_width, head_width)
                                    for i in range(head_convs)])
        self.cls_out = nn.Conv2d(head_width, num_classes, 1)
        self.reg_out = nn.Conv2d(head_width, 4, 1)
        # Paper Sec. 4.1: 3x3 conv, ReLU, 1x1 conv, binary softmax on the stride-16 map.
        self.focus_conv = nn.Conv2d(focus_input_channels(focus_features, fpn_width), focus_width, 3, 1, 1)
        self.focus_out = nn.Conv2d(focus_width, 2, 1)
        self.export_mode = False
        self._init_weights(prior_prob)
        # One head per transition (scale k -> k+1; None: that transition reads the paper's head), refit on
        # frozen features (model/focus_refit.py); the paper's single head above stays (channel 1 of "focus").
        self.transition_specs = list(transition_heads)
        self.transition_heads = nn.ModuleList(
            FocusHead(focus_input_channels(focus_features, fpn_width), **spec)
            for spec in transition_heads if spec is not None)

    def transition_head(self, k: int):
        """Transition k's own head (k from 0), or None where it reads the paper's."""
        if self.transition_specs[k] is None:
            return None
        return self.transition_heads[sum(s is not None for s in self.transition_specs[:k])]

    def _init_weights(self, prior_prob: float):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in (self.cls_out, self.reg_out, self.focus_out):
            nn.init.normal_(m.weight, std=0.01)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))
        # Most cells are background for FocusPixels too.
        with torch.no_grad():
            self.focus_out.bias.copy_(torch.tensor([1.0, -1.0]))

    def deploy(self) -> "AutoFocusNet":
        """Eval mode + contract outputs (what export and inference use)."""
        self.eval()
        self.export_mode = True
        return self

    @staticmethod
    def check_input(x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"image: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"image: expected shape (N, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % SIZE_DIVISOR or w % SIZE_DIVISOR or h == 0 or w == 0:
            raise ValueError(f"image: H and W must be positive multiples of {SIZE_DIVISOR}, got {h}x{w}")

    def _trunk(self, image: torch.Tensor):
        """Backbone and the top of the FPN: (c3, p4), p4 being the stride-16 map the focus head reads."""
        c3, c4, c5 = self.backbone(image)
        p5 = self.lat5(c5)
        p4 = self.smooth4(self.lat4(c4) + F.interpolate(p5, scale_factor=2.0, mode="nearest"))
        return c3, p4

    def _p3(self, c3: torch.Tensor, p4: torch.Tensor) -> torch.Tensor:
        return self.smooth3(self.lat3(c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest"))

    def _focus_input(self, p4: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
        """"p4": the FPN's stride-16 map (the paper's). With the stride-8 map p3 brought onto the same
        stride-16 cells, so that the head sees the finer detail that marks objects smaller than a cell:
        "p4+p3max" its 2x2 max-pool (fpn_width more channels), "p4+p3fold" each cell's 2x2 block of p3
        as 4 x fpn_width channels (pixel_unshuffle)."""
        if self.focus_features_kind == "p4":
            return p4
        if self.focus_features_kind == "p4+p3max":
            return torch.cat([p4, F.max_pool2d(p3, 2)], 1)
        return torch.cat([p4, F.pixel_unshuffle(p3, 2)], 1)

    def focus_features(self, image: torch.Tensor) -> torch.Tensor:
        """The stride-16 features (N, C, H/16, W/16) under the focus head (model/focus_refit.py)."""
        self.check_input(image)
        c3, p4 = self._trunk(image)
        return self._focus_input(p4, self._p3(c3, p4) if self.focus_features_kind != "p4" else None)

    def focus_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The FocusPixel head on stride-16 features: (N, 2, h, w) logits."""
        return self.focus_out(F.relu(self.focus_conv(features)))

    def forward(self, image: torch.Tensor, export: bool | None = None):
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.check_input(image)
        c3, p4 = self._trunk(image)
        p3 = self._p3(c3, p4)
        h = self.head(p3)
        cls_logits = self.cls_out(h)
        # Distances as base * exp(raw): positive, scale-free learning of log-distances.
        ltrb = self.ltrb_base * torch.exp(self.reg_out(h).clamp(-8.0, 8.0))
        focus_feats = self._focus_input(p4, p3)
        focus_logits = self.focus_logits(focus_feats)
        if export is None:
            export = self.export_mode
        if not export:
            out = {"cls_logits": cls_logits, "ltrb": ltrb, "focus_logits": focus_logits}
            if len(self.transition_heads):  # {transition k: its own head's logits}, for model.train
                out["transition_logits"] = {k: self.transition_head(k)(focus_feats)
                                            for k, spec in enumerate(self.transition_specs) if spec is not None}
            return out
        scores = torch.sigmoid(cls_logits)
        peaks = F.max_pool2d(scores, 3, stride=1, padding=1)
        scores = scores * (scores >= peaks).to(scores.dtype)
        focus = torch.softmax(focus_logits, dim=1)
        if len(self.transition_heads):
            focus = torch.cat([focus] + [torch.softmax(h(focus_feats), dim=1)[:, 1:] for h in self.transition_heads], 1)
        return {"scores": scores, "ltrb": ltrb, "focus": focus}


def build_model(config: dict, num_classes: int) -> AutoFocusNet:
    """The network described by config["network"] with `num_classes` outputs."""
    net = config["network"]
    return AutoFocusNet(num_classes, widths=tuple(net["widths"]), blocks=tuple(net["blocks"]),
                        fpn_width=net["fpn_width"], head_width=net["head_width"],
                        head_convs=net["head_convs"], focus_width=net["focus_width"],
                        ltrb_base=net["ltrb_base"], prior_prob=net["prior_prob"],
                        focus_features=net.get("focus_features", "p4"),
                        transition_heads=net.get("transition_heads", ()))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
