"""The cascade's parameters: the bundle's values, overridden per engine and per call, validated once.

Names are the bundle.json keys (docs/design.md: one name everywhere), plus the engine-only ones
(scale, padding, merge_chips, align_chips, keep_uncovered, chips_on_host, padded_decode, max_batch,
packing, canvas_gutter):
    scales          [[min_side, max_side], ...] per scale
    coarse_scale    mode autofocus: [min_side, max_side] of its scale 1 (the whole image, where the focus
                    maps come from), None = scales[0]. Sniper and single keep `scales`. A larger coarse
                    scale sharpens the focus maps, so the finer scales' chips shrink by more than scale 1
                    grows at the cheap end of the sweep (docs/experiments.md, "A larger coarse scale")
    valid_ranges    [[lo, hi], ...] per scale, sqrt(box area) in original pixels; hi None/inf = no bound
    chip_params     [{threshold, dilation, min_size[, box_score, box_max, merge]}, ...] per transition
                    (len(scales) - 1);
                    box_score (optional, None = off, the paper's Algorithm 1): the coarser scale's own
                    detections with a score >= box_score and a size inside the finer scale's valid range
                    set the focus map's cells under their boxes to 1 before Algorithm 1, so the finer scale
                    also looks again at the objects it is valid for that the coarser one already found;
                    box_max (optional, None = the finer scale's upper bound): painted boxes are at most
                    this sqrt(area), original px (large objects the coarser scale keeps anyway cost the
                    finer scale their whole area for a second look);
                    merge (optional, "touching" = the paper's): Algorithm 1's step 5, "touching" merges
                    every pair of touching chips, "cheaper" only those whose enclosing chip has no more
                    cells than the two (runtime/ops/maps.py focus_chips)
    decode          {score_threshold, max_candidates}
    soft_nms        {method, sigma, iou_threshold, score_threshold, class_aware}
    max_detections  detections kept per image after Soft-NMS
    scale           mode="single": which scale runs, 1-based (1 = the coarsest)
    padding         "bucket": every network input padded to the smallest bundle bucket holding it (the
                    only choice TensorRT accepts; chips of one bucket batch together); "divisor": padded
                    to a multiple of the size divisor (32) only, as model/evaluate.py does (less compute
                    on CPU, identical outputs to the evaluator); "shared": bucket shapes, but each batch
                    takes the largest remaining input's bucket and fills up to its max batch with any
                    input that fits (fewest network calls: on a GPU a call costs more than its pixels)
    merge_chips     merge a scale's chips of one image that overlap into their enclosing rectangle when
                    that runs fewer pixels (True by default)
    align_chips     widen each chip to the grid of its scale's network input (sides on multiples of
                    size_divisor / factor original pixels, within the image), so that its input is an exact
                    window of that scale's whole-image input: the same resampling phase and stride grid as
                    the pyramid, whose detections it then reproduces (False by default: +0.5 AP on val but
                    -0.2 on tune, for +4% padded pixels; on 1,000 more tuning images on the chip parameters'
                    own pixels-AP front)
    keep_uncovered  focus stacking (mode autofocus): a detection below its scale's valid range is kept
                    where no chip of the next scale holds it whole, instead of dropped (True by default).
                    The range leaves such an object to the finer scale, but the finer scale never saw it
                    whole there, so the coarser scale's box is the only one there is (the pyramid has the
                    finer scale's everywhere). False: the paper's rule. At the same pixels +0.07 AP on
                    test, +0.10 on tune1000 (docs/experiments.md)
    chips_on_host   on CUDA, run FocusChips (Algorithm 1) with the C++ kernels on a host copy of the
                    focus maps: the chips are read on the host anyway, and on small maps the C++ kernel
                    is faster than the CUDA one (one thread block per map)
    padded_decode   decode without a host read of each batch's candidate count (ops.decode(padded=True):
                    max_candidates rows an input, the empty ones masked out). Same detections; on CUDA
                    that read waits for the batch's network, so without it the host queues the next
                    batch at once (the default there); on the CPU the extra rows only cost time
    max_batch       network inputs per call: None = the bundle's per bucket (its TensorRT profiles); an
                    int >= 1 for every bucket, with backends that run any shape (on a GPU every call,
                    and the decode and host read that follow it, costs more than its pixels)
    packing         "none": each chip its own network input, padded per `padding`; "canvas": the chips of a
                    scale (all images of the call) packed onto the bundle's few fixed canvas shapes
                    (runtime/packing.py, bundle.json "canvases"), so that a scale runs one or two input
                    shapes in full batches; whole images (scale 1, sniper, single) are not packed.
                    "none" on the CPU (pixels decide there), "canvas" on CUDA
    canvas_gutter   packing="canvas": input pixels of zeros between neighbouring chips on a canvas (None:
                    the bundle's, runtime.packing.DEFAULT_GUTTER when it has none)
    focus_head      which focus map makes each transition's chips: "transition" (default) the bundle's
                    head of that transition (bundle.json "focus_channels", issue 21), "paper" the paper's
                    single head (channel 1 of "focus"; what a bundle without transition heads always uses),
                    or a list with one of them per transition (["paper", "transition"]: ablations).
                    chip_params are tuned for one of them: compare the other with its own thresholds
Dict-valued parameters merge key by key (soft_nms={"sigma": 0.3} keeps the other keys); chip_params
entries merge likewise with the bundle's entry of the same transition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# One number check for the whole package: finite, with an optional lower bound.
from .ops import _number
from .ops.maps import DEFAULT_MERGE, MERGE_RULES

PADDINGS = ("bucket", "divisor", "shared")
PACKINGS = ("none", "canvas")
DECODE_KEYS = ("score_threshold", "max_candidates")
SOFT_NMS_KEYS = ("method", "sigma", "iou_threshold", "score_threshold", "class_aware")
SOFT_NMS_METHODS = ("gaussian", "linear", "hard")
CHIP_KEYS = ("threshold", "dilation", "min_size")
CHIP_OPTIONAL_KEYS = ("box_score", "box_max", "merge")
NAMES = ("scales", "coarse_scale", "valid_ranges", "chip_params", "decode", "soft_nms", "max_detections", "scale",
         "padding", "merge_chips", "align_chips", "keep_uncovered", "chips_on_host", "padded_decode", "max_batch",
         "packing", "canvas_gutter", "focus_head")
FOCUS_HEADS = ("transition", "paper")


@dataclass(frozen=True)
class CascadeParams:
    scales: tuple            # ((min_side, max_side), ...) floats
    valid_ranges: tuple      # ((lo, hi), ...) floats, hi may be inf
    chip_params: tuple       # ({"threshold", "dilation", "min_size", "box_score", "box_max", "merge"}, ...)
    decode: dict
    soft_nms: dict
    max_detections: int
    scale: int               # 1-based
    padding: str
    merge_chips: bool
    align_chips: bool
    keep_uncovered: bool
    chips_on_host: bool
    padded_decode: bool
    max_batch: int | None    # None: the bundle's per bucket
    packing: str = "none"
    canvas_gutter: int | None = None  # None: the bundle's
    focus_channels: tuple = ()        # per transition, the channel of "focus" its chips are cut from
    coarse_scale: tuple | None = None  # mode autofocus's scale 1 (min_side, max_side); None = scales[0]


def bundle_values(bundle) -> dict:
    """The parameters as the bundle sets them (engine-only ones at their defaults)."""
    return {"scales": bundle.scales, "coarse_scale": bundle.coarse_scale, "valid_ranges": bundle.valid_ranges,
            "chip_params": bundle.chip_params,
            "decode": dict(bundle.decode), "soft_nms": {"class_aware": True, **bundle.soft_nms},
            "max_detections": bundle.max_detections, "scale": 1, "padding": "bucket", "merge_chips": True,
            "align_chips": False, "keep_uncovered": True, "chips_on_host": False, "padded_decode": False,
            "max_batch": None, "packing": "none", "canvas_gutter": None, "focus_head": "transition",
            "focus_channels": list(bundle.focus_channels)}


def check_names(overrides: dict, where: str) -> None:
    unknown = sorted(set(overrides) - set(NAMES))
    if unknown:
        raise TypeError(f"{where}: unknown parameter(s) {unknown}; known: {list(NAMES)}")


def resolve(base: dict, *layers: dict) -> CascadeParams:
    """base (bundle_values) overridden by each layer in turn; raises ValueError/TypeError naming the
    parameter when a value is malformed or the per-scale lists disagree in length."""
    values = {k: v for k, v in base.items()}
    for layer in layers:
        check_names(layer, "overrides")
        for name, value in layer.items():
            if name in ("decode", "soft_nms"):
                values[name] = {**values[name], **_mapping(value, name)}
            elif name == "chip_params":
                values[name] = _merge_chip_params(values[name], value)
            else:
                values[name] = value
    scales = tuple(_scale(s, i) for i, s in enumerate(_sequence(values["scales"], "scales")))
    if not scales:
        raise ValueError("scales: expected at least one [min_side, max_side]")
    ranges = tuple(_valid_range(r, i) for i, r in enumerate(_sequence(values["valid_ranges"], "valid_ranges")))
    if len(ranges) != len(scales):
        raise ValueError(f"valid_ranges: expected one [lo, hi] per scale ({len(scales)}), got {len(ranges)}")
    chips = tuple(_chip_params(c, i) for i, c in enumerate(_sequence(values["chip_params"], "chip_params")))
    if len(chips) != len(scales) - 1:
        raise ValueError(f"chip_params: expected one {{threshold, dilation, min_size}} per scale transition "
                         f"({len(scales) - 1}), got {len(chips)}")
    return CascadeParams(scales=scales, valid_ranges=ranges, chip_params=chips,
                         decode=_decode(values["decode"]), soft_nms=_soft_nms(values["soft_nms"]),
                         max_detections=_int(values["max_detections"], "max_detections", 0),
                         scale=_scale_index(values["scale"], len(scales)),
                         padding=_choice(values["padding"], "padding", PADDINGS),
                         merge_chips=_bool(values["merge_chips"], "merge_chips"),
                         align_chips=_bool(values["align_chips"], "align_chips"),
                         keep_uncovered=_bool(values["keep_uncovered"], "keep_uncovered"),
                         chips_on_host=_bool(values["chips_on_host"], "chips_on_host"),
                         padded_decode=_bool(values["padded_decode"], "padded_decode"),
                         max_batch=None if values["max_batch"] is None else _int(values["max_batch"], "max_batch", 1),
                         packing=_choice(values.get("packing", "none"), "packing", PACKINGS),
                         canvas_gutter=(None if values.get("canvas_gutter") is None
                                        else _int(values["canvas_gutter"], "canvas_gutter", 0)),
                         focus_channels=_focus_channels(values, len(scales) - 1),
                         coarse_scale=(None if values.get("coarse_scale") is None
                                       else _scale(values["coarse_scale"], name="coarse_scale")))


# ------------------------------------------------------------------------------------------ checks

def _focus_channels(values: dict, transitions: int) -> tuple:
    head = values.get("focus_head", "transition")
    heads = list(head) if isinstance(head, (list, tuple)) else [head] * transitions
    if len(heads) != transitions:
        raise ValueError(f"focus_head: expected one of {list(FOCUS_HEADS)} or a list of them, one per transition "
                         f"({transitions}), got {head!r}")
    heads = [_choice(h, "focus_head", FOCUS_HEADS) for h in heads]
    channels = list(values.get("focus_channels") or [])
    if not channels or all(h == "paper" for h in heads):
        return (1,) * transitions
    if len(channels) != transitions:  # scales overridden to another count: the bundle's heads do not fit
        raise ValueError(f"focus_head: the bundle has focus heads for {len(channels)} transitions, the scales "
                         f"give {transitions}; use focus_head=\"paper\" with other scales")
    return tuple(1 if h == "paper" else int(c) for h, c in zip(heads, channels))


def _mapping(value, name: str) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"{name}: expected a dict, got {type(value).__name__}")
    return value


def _sequence(value, name: str):
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}: expected a list, got {type(value).__name__}")
    return value


def _merge_chip_params(current, value):
    value = _sequence(value, "chip_params")
    out = []
    for i, entry in enumerate(value):
        entry = _mapping(entry, f"chip_params[{i}]")
        out.append({**(current[i] if i < len(current) else {}), **entry})
    return out


def _int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not (hasattr(value, "__index__")):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    return value


def _bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def _choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def _scale(value, i: int = 0, name: str | None = None) -> tuple:
    name = name or f"scales[{i}]"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name}: expected [min_side, max_side], got {value!r}")
    lo = _number(value[0], f"{name} min_side", 0, exclusive=True)
    hi = _number(value[1], f"{name} max_side", 0, exclusive=True)
    if hi < lo:
        raise ValueError(f"{name}: expected min_side <= max_side, got {list(value)}")
    return lo, hi


def _valid_range(value, i: int) -> tuple:
    name = f"valid_ranges[{i}]"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name}: expected [lo, hi] (hi None for no upper bound), got {value!r}")
    lo = _number(value[0], f"{name} lo", 0)
    hi = math.inf if value[1] is None else _number(value[1], f"{name} hi", 0, allow_inf=True)
    if hi < lo:
        raise ValueError(f"{name}: expected lo <= hi, got {list(value)}")
    return lo, hi


def _chip_params(value, i: int) -> dict:
    name = f"chip_params[{i}]"
    value = _mapping(value, name)
    unknown = sorted(set(value) - set(CHIP_KEYS) - set(CHIP_OPTIONAL_KEYS))
    missing = sorted(set(CHIP_KEYS) - set(value))
    if unknown or missing:
        raise ValueError(f"{name}: expected keys {list(CHIP_KEYS)} (optional {list(CHIP_OPTIONAL_KEYS)}); "
                         f"unknown {unknown}, missing {missing}")
    dilation = _int(value["dilation"], f"{name} dilation", 1)
    if dilation % 2 == 0:
        raise ValueError(f"{name} dilation: expected an odd size, got {dilation}")
    box_score = value.get("box_score")
    if box_score is not None:
        box_score = _number(box_score, f"{name} box_score", 0)
        if box_score > 1:
            raise ValueError(f"{name} box_score: expected a score in [0, 1] or None, got {box_score}")
    box_max = value.get("box_max")
    if box_max is not None:
        box_max = _number(box_max, f"{name} box_max", 0)
        if box_max <= 0:
            raise ValueError(f"{name} box_max: expected a side in original pixels > 0 or None, got {box_max}")
    merge = value.get("merge", DEFAULT_MERGE)
    if merge not in MERGE_RULES:
        raise ValueError(f"{name} merge: expected one of {list(MERGE_RULES)}, got {merge!r}")
    return {"threshold": _number(value["threshold"], f"{name} threshold"), "dilation": dilation,
            "min_size": _int(value["min_size"], f"{name} min_size", 1), "box_score": box_score,
            "box_max": box_max, "merge": merge}


def _decode(value: dict) -> dict:
    unknown = sorted(set(value) - set(DECODE_KEYS))
    if unknown:
        raise ValueError(f"decode: unknown key(s) {unknown}; known: {list(DECODE_KEYS)}")
    return {"score_threshold": _number(value["score_threshold"], "decode score_threshold"),
            "max_candidates": _int(value["max_candidates"], "decode max_candidates", 0)}


def _soft_nms(value: dict) -> dict:
    unknown = sorted(set(value) - set(SOFT_NMS_KEYS))
    if unknown:
        raise ValueError(f"soft_nms: unknown key(s) {unknown}; known: {list(SOFT_NMS_KEYS)}")
    return {"method": _choice(value["method"], "soft_nms method", SOFT_NMS_METHODS),
            "sigma": _number(value["sigma"], "soft_nms sigma", 0, exclusive=True),
            "iou_threshold": _number(value.get("iou_threshold", 0.3), "soft_nms iou_threshold", 0),
            "score_threshold": _number(value["score_threshold"], "soft_nms score_threshold"),
            "class_aware": _bool(value.get("class_aware", True), "soft_nms class_aware")}


def _scale_index(value, count: int) -> int:
    value = _int(value, "scale", 1)
    if value > count:
        raise ValueError(f"scale: expected 1..{count} (1-based index into scales), got {value}")
    return value
