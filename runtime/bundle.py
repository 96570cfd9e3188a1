"""The deployable bundle: a folder of artefacts plus `bundle.json`, its one schema.

Written by `export/build_engine.py` (through `write_bundle`) and read by the runtime (through
`load_bundle`): this module is the only code that knows the file layout, so writer and reader cannot
drift apart. It imports nothing from model/ or export/ (a deployment needs no training code).

Folder layout:
    bundle.json        this schema (SCHEMA_VERSION)
    model.onnx         fp32 network, dynamic (N, 3, H, W), outputs per docs/contract.md
    model_fp16.onnx    the same in fp16 with fp32 inputs/outputs (TensorRT strongly typed builds)
    model.pt2          torch.export program (PyTorch backend)
    *.plan             TensorRT engines, one optimization profile per bucket (only where TensorRT ran)

Every artefact carries a sha256 checksum; `load_bundle` refuses a folder whose files are missing or
changed, so a half-copied or hand-edited bundle fails loudly at load instead of giving wrong boxes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_VERSION = 1
BUNDLE_FILE = "bundle.json"
REBUILD_HINT = "rebuild it with `python export/build_engine.py` (see --help for --checkpoint/--out)"
ARTEFACT_FILES = ("model.onnx", "model_fp16.onnx", "model.pt2")  # plus any *.plan
PRECISIONS = ("fp32", "fp16")

# docs/contract.md: the network's input and output tensor names, defined here once (model/, export/
# and the backends import them).
INPUT_NAME = "image"
OUTPUT_NAMES = ("scores", "ltrb", "focus")
FOCUS_OUTPUT = OUTPUT_NAMES.index("focus")  # its entry in OUTPUT_CONTRACT["outputs"]
# docs/contract.md, restated as data: names, symbolic shapes and strides of the network's I/O. "focus"
# has 2 channels (the paper's softmax) plus one per transition head (bundle.json "focus_channels").
OUTPUT_CONTRACT = {
    "document": "docs/contract.md",
    "input": {"name": INPUT_NAME, "shape": ["N", 3, "H", "W"], "dtype": "float32"},
    "outputs": [
        {"name": OUTPUT_NAMES[0], "shape": ["N", "C", "H/8", "W/8"], "stride": 8, "dtype": "float32"},
        {"name": OUTPUT_NAMES[1], "shape": ["N", 4, "H/8", "W/8"], "stride": 8, "dtype": "float32"},
        {"name": OUTPUT_NAMES[2], "shape": ["N", 2, "H/16", "W/16"], "stride": 16, "dtype": "float32"},
    ],
}


class BundleError(ValueError):
    """A bundle folder that cannot be used as it is: the message names the file and the fix."""


def default_input(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), size_divisor: int = 32) -> dict:
    """The bundle's "input" section: the runtime's image conventions with the network's normalisation."""
    return {"name": INPUT_NAME, "mean": list(mean), "std": list(std), "channel_order": "RGB",
            "image_order": "BGR", "size_divisor": int(size_divisor), "pad_value": 0.0}


# The cascade's parameters have no default in the runtime: every bundle carries its own (export writes
# the model's, model/configs/default.json "inference" for the shipped one), so there is one source each.
CASCADE_KEYS = ("scales", "valid_ranges", "chip_params", "soft_nms", "max_detections", "decode")
# The paper's reference values (docs/design.md: the authors' AutoFocus configuration), for a bundle
# that wants them and for the tests; not used unless passed.
PAPER_PARAMETERS = {
    "scales": [[480, 512], [800, 1280], [1400, 2000]],
    # sqrt(box area) in original-image pixels; None = no upper bound.
    "valid_ranges": [[75, None], [32, 180], [0, 75]],
    "chip_params": [{"threshold": 0.02, "dilation": 3, "min_size": 16},
                    {"threshold": 0.2, "dilation": 3, "min_size": 20}],
    "soft_nms": {"method": "gaussian", "sigma": 0.55, "iou_threshold": 0.3, "score_threshold": 0.001},
    "max_detections": 200,
    "decode": {"score_threshold": 0.05, "max_candidates": 1000},
}


def _required():
    return field(kw_only=True)


@dataclass
class Bundle:
    """Everything the runtime needs besides the artefacts themselves. Field names are the JSON keys.

    The cascade's parameters (CASCADE_KEYS) are required: see PAPER_PARAMETERS for the paper's."""
    classes: list
    buckets: list                      # [[height, width], ...] multiples of 32, smallest area first
    max_batch: list                    # one int per bucket: the largest batch its profile accepts
    precision: str = "fp32"            # precision of the engines ("fp32" | "fp16")
    artefacts: dict = field(default_factory=dict)   # file name -> {"sha256": hex, "bytes": int}
    engines: list = field(default_factory=list)     # [{"file", "precision", "tensorrt", "gpu", "profiles"}]
    input: dict = field(default_factory=default_input)
    strides: dict = field(default_factory=lambda: {"detection": 8, "focus": 16})
    scales: list = _required()         # [[min_side, max_side], ...] coarse to fine
    valid_ranges: list = _required()   # per scale [lo, hi]: sqrt(box area) in original pixels; hi None: open
    chip_params: list = _required()    # per transition {threshold, dilation, min_size[, box_score, box_max, merge]}
    soft_nms: dict = _required()       # {method, sigma, iou_threshold, score_threshold}
    max_detections: int = _required()
    decode: dict = _required()         # {score_threshold, max_candidates}
    output_contract: dict = field(default_factory=lambda: json.loads(json.dumps(OUTPUT_CONTRACT)))
    versions: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)      # export-time checks (max abs errors), for the record
    build: dict = field(default_factory=dict)       # how it was built: checkpoint, bucket waste, time
    # packing="canvas" (runtime/packing.py): {"gutter": input px, "shapes": [[[H, W], ...] per scale]};
    # optional (older bundles lack it: the runtime derives the shapes from the scales)
    canvases: dict = field(default_factory=dict)
    # per transition, the channel of output "focus" that holds its FocusPixel probability: [2, 3] for a
    # network with a focus head per transition (issue 21; channel 1 is the paper's single head, [2, 1] where
    # transition 2 keeps it). Optional: empty (older bundles, user networks) = channel 1 for every transition
    focus_channels: list = field(default_factory=list)
    # AutoFocus's scale 1 [min_side, max_side] where it differs from scales[0] (runtime/params.py
    # coarse_scale); optional: None = scales[0], as in the paper and older bundles
    coarse_scale: list | None = None
    schema_version: int = SCHEMA_VERSION
    folder: Path | None = field(default=None, compare=False)  # where it was loaded from (not in JSON)

    def path(self, name: str) -> Path:
        """Absolute path of artefact `name` inside the bundle folder."""
        if self.folder is None:
            raise BundleError("bundle: not attached to a folder (use load_bundle)")
        return self.folder / name

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("folder")
        return d


OPTIONAL_KEYS = ("canvases", "focus_channels", "coarse_scale")
REQUIRED_KEYS = tuple(f.name for f in dataclasses.fields(Bundle) if f.name not in ("folder", *OPTIONAL_KEYS))


# ---------------------------------------------------------------------------------------------- io

def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def installed_versions() -> dict:
    """Versions of the packages that take part in building/running a bundle (None where absent)."""
    def version(*names):
        for name in names:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None
    return {"torch": version("torch"), "onnx": version("onnx"),
            "onnxruntime": version("onnxruntime", "onnxruntime-gpu"),
            "tensorrt": version("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12"),
            "autofocus_trt": version("autofocus-trt")}


def write_bundle(folder: str | os.PathLike, *, classes, buckets, max_batch, precision: str = "fp32",
                 artefacts=None, **fields) -> Bundle:
    """Writes `folder/bundle.json` describing the artefacts already written into `folder`.

    artefacts: file names inside folder (default: every known artefact present, ARTEFACT_FILES and
    *.plan); their sha256 checksums are recorded. fields: any other Bundle field (scales, chip_params,
    engines, parity, versions, ...). Returns the Bundle as load_bundle would read it back."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"folder: {folder} is not a directory")
    unknown = set(fields) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
    if unknown:
        raise TypeError(f"write_bundle: unknown bundle fields {sorted(unknown)} "
                        f"(known: {list(REQUIRED_KEYS + OPTIONAL_KEYS)})")
    missing = [k for k in CASCADE_KEYS if k not in fields]
    if missing:
        raise TypeError(f"write_bundle: missing bundle fields {missing}: a bundle carries its own cascade "
                        "parameters (export passes the model configuration's \"inference\"; "
                        "runtime.bundle.PAPER_PARAMETERS holds the paper's)")
    if artefacts is None:
        artefacts = [n for n in ARTEFACT_FILES if (folder / n).is_file()]
        artefacts += sorted(p.name for p in folder.glob("*.plan"))
    sums = {}
    for name in artefacts:
        p = folder / name
        if not p.is_file():
            raise BundleError(f"artefacts: {p} does not exist")
        sums[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    versions = {**installed_versions(), **fields.pop("versions", {})}
    bundle = Bundle(classes=list(classes), buckets=[list(map(int, b)) for b in buckets],
                    max_batch=[int(m) for m in max_batch], precision=precision, artefacts=sums,
                    versions=versions, **fields)
    _validate_fields(bundle.to_dict(), folder / BUNDLE_FILE)
    tmp = folder / (BUNDLE_FILE + ".tmp")
    tmp.write_text(json.dumps(bundle.to_dict(), indent=2, allow_nan=False) + "\n")
    tmp.replace(folder / BUNDLE_FILE)  # atomic: a reader never sees half a file
    bundle.folder = folder.resolve()
    return bundle


def load_bundle(folder: str | os.PathLike, verify_checksums: bool = True) -> Bundle:
    """Reads and validates `folder/bundle.json` and the artefacts it lists.

    Raises BundleError naming the file and what to do when: the folder or bundle.json is missing or
    unreadable, the schema version differs, a key is missing or malformed, or an artefact is missing
    or its sha256 does not match (verify_checksums=False skips hashing, not the existence check)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"bundle folder: {folder} does not exist; build one with "
                          "`python export/build_engine.py --out <folder>`")
    meta = folder / BUNDLE_FILE
    if not meta.is_file():
        raise BundleError(f"bundle: {meta} is missing; {REBUILD_HINT}")
    try:
        data = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"bundle: {meta} is not readable JSON ({e}); {REBUILD_HINT}") from e
    if not isinstance(data, dict):
        raise BundleError(f"bundle: {meta} must hold a JSON object; {REBUILD_HINT}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"bundle: {meta} has schema_version {version!r}, this runtime reads "
                          f"{SCHEMA_VERSION}; {REBUILD_HINT}")
    _validate_fields(data, meta)
    for name, info in data["artefacts"].items():
        p = folder / name
        if not p.is_file():
            raise BundleError(f"bundle: artefact {p} listed in {meta} is missing; {REBUILD_HINT}")
        if p.stat().st_size != info["bytes"] or (verify_checksums and sha256_file(p) != info["sha256"]):
            raise BundleError(f"bundle: artefact {p} does not match its sha256 checksum in {meta} "
                              f"(changed or truncated since the build); {REBUILD_HINT}")
    for engine in data["engines"]:
        if engine.get("file") not in data["artefacts"]:
            raise BundleError(f"bundle: engine {engine.get('file')!r} in {meta} is not a listed artefact; "
                              f"{REBUILD_HINT}")
    bundle = Bundle(**{k: data[k] for k in REQUIRED_KEYS}, **{k: data[k] for k in OPTIONAL_KEYS if k in data})
    bundle.folder = folder.resolve()
    return bundle


# --------------------------------------------------------------------------------------- validation

def _fail(meta: Path, what: str):
    raise BundleError(f"bundle: {meta}: {what}; {REBUILD_HINT}")


def _validate_fields(d: dict, meta: Path) -> None:
    """Structural checks: present keys, types, and the invariants the runtime relies on."""
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        _fail(meta, f"missing key(s) {missing}")
    if not isinstance(d["classes"], list) or not d["classes"] or not all(isinstance(c, str) for c in d["classes"]):
        _fail(meta, "'classes' must be a non-empty list of names")
    div = d["input"].get("size_divisor") if isinstance(d["input"], dict) else None
    for k in ("mean", "std", "channel_order", "image_order", "size_divisor"):
        if not isinstance(d["input"], dict) or k not in d["input"]:
            _fail(meta, f"'input' lacks {k!r}")
    buckets = d["buckets"]
    if (not isinstance(buckets, list) or not buckets
            or not all(isinstance(b, list) and len(b) == 2 and all(isinstance(v, int) and v > 0 for v in b)
                       for b in buckets)):
        _fail(meta, "'buckets' must be a non-empty list of [height, width] positive ints")
    if any(v % div for b in buckets for v in b):
        _fail(meta, f"'buckets' sides must be multiples of size_divisor {div}, got {buckets}")
    mb = d["max_batch"]
    if not isinstance(mb, list) or len(mb) != len(buckets) or not all(isinstance(m, int) and m >= 1 for m in mb):
        _fail(meta, f"'max_batch' must hold one int >= 1 per bucket ({len(buckets)}), got {mb}")
    if d["precision"] not in PRECISIONS:
        _fail(meta, f"'precision' must be one of {PRECISIONS}, got {d['precision']!r}")
    n = len(d["scales"]) if isinstance(d["scales"], list) else -1
    if n < 1 or not all(isinstance(s, list) and len(s) == 2 for s in d["scales"]):
        _fail(meta, "'scales' must be a non-empty list of [min_side, max_side]")
    if not isinstance(d["valid_ranges"], list) or len(d["valid_ranges"]) != n:
        _fail(meta, f"'valid_ranges' must have one [lo, hi] per scale ({n})")
    if not isinstance(d["chip_params"], list) or len(d["chip_params"]) != n - 1 or not all(
            isinstance(c, dict) and {"threshold", "dilation", "min_size"} <= set(c) for c in d["chip_params"]):
        _fail(meta, f"'chip_params' must have one {{threshold, dilation, min_size}} per transition ({n - 1})")
    if not isinstance(d["soft_nms"], dict) or not {"method", "sigma", "score_threshold"} <= set(d["soft_nms"]):
        _fail(meta, "'soft_nms' must hold method, sigma, score_threshold")
    if not isinstance(d["decode"], dict) or not {"score_threshold", "max_candidates"} <= set(d["decode"]):
        _fail(meta, "'decode' must hold score_threshold, max_candidates")
    if not isinstance(d["artefacts"], dict) or not all(
            isinstance(v, dict) and {"sha256", "bytes"} <= set(v) for v in d["artefacts"].values()):
        _fail(meta, "'artefacts' must map file names to {sha256, bytes}")
    if "model.onnx" not in d["artefacts"] and "model.pt2" not in d["artefacts"]:
        _fail(meta, "'artefacts' holds neither model.onnx nor model.pt2: no backend could run it")
    if not isinstance(d["engines"], list):
        _fail(meta, "'engines' must be a list")
    for lo_hi in d["valid_ranges"]:
        if not (isinstance(lo_hi, list) and len(lo_hi) == 2):
            _fail(meta, f"'valid_ranges' entries must be [lo, hi], got {lo_hi!r}")
    contract = d["output_contract"]
    try:
        n_focus = contract["outputs"][FOCUS_OUTPUT]["shape"][1]
    except (TypeError, KeyError, IndexError):
        _fail(meta, "'output_contract' must list the outputs scores, ltrb, focus with their shapes")
    if not isinstance(n_focus, int) or isinstance(n_focus, bool) or n_focus < 2:
        _fail(meta, f"'output_contract' focus shape must have an int >= 2 channels, got {n_focus!r}")
    fc = d.get("focus_channels", [])
    if fc and (not isinstance(fc, list) or len(fc) != n - 1 or not all(
            isinstance(c, int) and not isinstance(c, bool) and 1 <= c < n_focus for c in fc)):
        _fail(meta, f"'focus_channels' must hold one channel of 'focus' in [1, {n_focus - 1}] per transition "
                    f"({n - 1}), got {fc!r}")
    coarse = d.get("coarse_scale")
    if coarse is not None and not (isinstance(coarse, list) and len(coarse) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in coarse)
            and coarse[0] <= coarse[1]):
        _fail(meta, f"'coarse_scale' must be null or [min_side, max_side] with 0 < min_side <= max_side, "
                    f"got {coarse!r}")
    canvases = d.get("canvases", {})
    if canvases:
        gutter, shapes = canvases.get("gutter") if isinstance(canvases, dict) else None, \
            canvases.get("shapes") if isinstance(canvases, dict) else None
        if not isinstance(gutter, int) or isinstance(gutter, bool) or gutter < 0:
            _fail(meta, f"'canvases' must hold 'gutter', an int >= 0 (input pixels), got {gutter!r}")
        if not isinstance(shapes, list) or len(shapes) != n or not all(
                isinstance(per, list) and all(isinstance(c, list) and len(c) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % div == 0 for v in c) for c in per)
                for per in shapes):
            _fail(meta, f"'canvases' 'shapes' must hold, per scale ({n}), a list of [height, width] positive "
                        f"multiples of size_divisor {div}, got {shapes!r}")


def output_contract(focus_channel_count: int = 2) -> dict:
    """OUTPUT_CONTRACT with "focus" holding focus_channel_count channels (2 + one per transition head)."""
    contract = json.loads(json.dumps(OUTPUT_CONTRACT))
    contract["outputs"][FOCUS_OUTPUT]["shape"][1] = int(focus_channel_count)
    return contract


def focus_channel_count(bundle: Bundle) -> int:
    """Channels of the network's "focus" output: the contract's (2 for a bundle of the paper's head)."""
    return int(bundle.output_contract["outputs"][FOCUS_OUTPUT]["shape"][1])


def valid_range(bundle: Bundle, scale_index: int) -> tuple[float, float]:
    """(lo, hi) of a scale's valid range with hi = inf where the bundle stores None."""
    lo, hi = bundle.valid_ranges[scale_index]
    return float(lo), (math.inf if hi is None else float(hi))
