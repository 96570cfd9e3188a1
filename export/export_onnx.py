"""The network to portable programs, each checked against PyTorch before it is trusted.

    export_onnx(model, path)             -> model.onnx  (fp32, dynamic N/H/W, opset >= 17)
    export_onnx_fp16(onnx_path, path)    -> model_fp16.onnx (fp16 inside, fp32 I/O: TensorRT strongly typed)
    export_torch_program(model, path)    -> model.pt2   (torch.export, dynamic N/H/W)
    check_parity(model, onnx_path, ...)  -> {output: max abs error}   (onnxruntime CPU vs PyTorch)
    check_torch_program_parity(model, pt2_path, ...)

Names and shapes follow docs/contract.md: input `image` (N, 3, H, W), outputs `scores`, `ltrb`, `focus`.

Why the scores comparison is tie-aware: `scores` keeps a cell only where it equals the 3x3 max of its
neighbourhood. Two neighbouring cells whose scores agree to ~1e-7 can swap which one is the peak under
a different (equally correct) summation order, turning a value into 0 and back. Such flips are not
export errors, so a cell whose pre-peak score is within `tie_tolerance` of its neighbourhood max is
counted as a tie flip (reported) instead of an error; every other cell must meet the bar.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runtime.bundle import INPUT_NAME, OUTPUT_NAMES

SIZE_DIVISOR = 32
DEFAULT_OPSET = 18          # the dynamo exporter's native opset (>= 17 as required)
MAX_SIDE_CELLS = 128        # dynamic H and W up to 32 * 128 = 4096 px
PARITY_SHAPES = ((1, 3, 384, 512), (2, 3, 512, 512), (3, 3, 640, 896))
FP32_TOLERANCE = 1e-4
# ltrb is in pixels (hundreds for large boxes), where float32 itself rounds at ~1e-5 px: its bar is
# relative, |a - b| <= 1e-4 * max(1, |b|), i.e. still 1e-4 absolute below one pixel.
FP32_RELATIVE = {"ltrb"}
# fp16 storage has 11 significant bits: 1e-2 absolute on the [0, 1] outputs, 1e-2 relative on ltrb (px).
FP16_TOLERANCE = {"scores": 1e-2, "ltrb": 1e-2, "focus": 1e-2}
FP16_RELATIVE = {"ltrb"}


class ParityError(AssertionError):
    """An exported program disagrees with PyTorch beyond the bar; the message names the output."""


class ContractOutputs(torch.nn.Module):
    """Wraps the detector so that forward(image) returns the contract's tuple (scores, ltrb, focus).

    The detector's deploy mode (`model.deploy()`, `forward(x, export=True)`) returns a dict keyed by
    the contract names; exporters need a fixed tuple order."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image):
        out = self.model(image, export=True)
        return tuple(out[name] for name in OUTPUT_NAMES)


def _deploy(model: torch.nn.Module) -> ContractOutputs:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, "deploy"):
        model.deploy()
    model.eval()
    return ContractOutputs(model).eval()


def _dynamic_dims():
    batch = torch.export.Dim("batch", min=1, max=1024)
    # Multiplier-style constraints: H and W are 32 * an integer, as the contract requires. At least
    # 64 px: at 32 px the stride-32 map is 1 x 1 and torch.export specialises that case away.
    h32 = torch.export.Dim("h32", min=2, max=MAX_SIDE_CELLS)
    w32 = torch.export.Dim("w32", min=2, max=MAX_SIDE_CELLS)
    return {INPUT_NAME: {0: batch, 2: SIZE_DIVISOR * h32, 3: SIZE_DIVISOR * w32}}


def _example_input(model: torch.nn.Module) -> torch.Tensor:
    # Batch 2 and H != W: a size-1 or repeated example dimension would be specialised to a constant.
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    return torch.randn(2, 3, 256, 320, generator=torch.Generator().manual_seed(0), dtype=dtype)


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, opset: int = DEFAULT_OPSET,
                verbose: bool = False) -> Path:
    """Exports the detector's contract outputs to ONNX at `path` (dynamic batch, height, width).

    Uses the torch.export-based exporter (dynamo=True) with H = 32*h32, W = 32*w32; then runs the
    ONNX checker and shape inference and stores the inferred model. Returns the path."""
    import onnx
    if opset < 17:
        raise ValueError(f"opset: expected >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _deploy(model)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapped, (_example_input(model),), dynamo=True, opset_version=opset,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_shapes=_dynamic_dims(), external_data=False, verbose=verbose,
            report=False, optimize=True)
    proto = program.model_proto
    _name_dynamic_axes(proto)
    onnx.checker.check_model(proto, full_check=True)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.save(proto, str(path))
    return path


def _name_dynamic_axes(proto) -> None:
    """Readable symbolic dims on the graph I/O (the exporter's are internal symbols like 's25')."""
    names = {INPUT_NAME: ("batch", None, "height", "width"),
             "scores": ("batch", None, "height/8", "width/8"),
             "ltrb": ("batch", None, "height/8", "width/8"),
             "focus": ("batch", None, "height/16", "width/16")}
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims, names.get(value.name, ())):
            if name is not None and not dim.HasField("dim_value"):
                dim.dim_param = name


def export_onnx_fp16(onnx_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """fp16 copy of an fp32 ONNX with fp32 inputs/outputs (Casts inside), for strongly typed TensorRT
    networks (TensorRT 10 and 11; 11 removed the weakly typed FP16 builder flag)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel
    proto = onnx.load(str(onnx_path))
    del proto.graph.value_info[:]  # fp32 intermediate types would contradict the fp16 graph
    half = convert_float_to_float16(proto, keep_io_types=True)
    wrapped = OnnxModel(half)
    wrapped.topological_sort()  # the converter appends the input Casts last; the checker wants order
    half = wrapped.model
    onnx.checker.check_model(half, full_check=True)
    half = onnx.shape_inference.infer_shapes(half, check_type=True, strict_mode=True)
    path = Path(path)
    onnx.save(half, str(path))
    return path


def export_torch_program(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """torch.export of the contract outputs (dynamic batch, H = 32*h32, W = 32*w32) saved as a .pt2."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _deploy(model)
    with torch.no_grad():
        program = torch.export.export(wrapped, (_example_input(model),), dynamic_shapes=_dynamic_dims())
    torch.export.save(program, str(path))
    return path


# ------------------------------------------------------------------------------------------- parity

def _check_shapes(shapes) -> list[tuple]:
    out = []
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        if (len(shape) != 4 or shape[1] != 3 or shape[0] < 1 or min(shape[2:]) < 2 * SIZE_DIVISOR
                or shape[2] % SIZE_DIVISOR or shape[3] % SIZE_DIVISOR):
            raise ValueError(f"shapes: expected (N, 3, H, W) with H, W multiples of {SIZE_DIVISOR}, at least "
                             f"{2 * SIZE_DIVISOR}, got {shape}")
        out.append(shape)
    if not out:
        raise ValueError("shapes: expected at least one input shape")
    return out


def _parity_inputs(shapes, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for shape in shapes:
        # Normalised images are roughly unit-variance; a smooth field plus noise gives scores with
        # real structure (distinct peaks) rather than white noise.
        n, _, h, w = shape
        coarse = torch.randn(n, 3, h // 32 + 1, w // 32 + 1, generator=gen)
        smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        yield shape, (smooth + 0.5 * torch.randn(n, 3, h, w, generator=gen)).float()


def _pre_peak_scores(model: torch.nn.Module, image: torch.Tensor):
    """Per-class scores before the 3x3 peak step, for tie detection (None if the model cannot say)."""
    try:
        raw = model(image, export=False)
        return torch.sigmoid(raw["cls_logits"]).numpy()
    except (TypeError, KeyError):
        return None


def _near_ties(pre: np.ndarray, tie_tolerance: float) -> np.ndarray:
    """Cells whose score is within tie_tolerance of the largest of their 8 neighbours: whether such a
    cell is the 3x3 peak depends on rounding, so either answer is correct."""
    h, w = pre.shape[-2:]
    padded = np.pad(pre, [(0, 0)] * (pre.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    others = np.full_like(pre, -np.inf)
    for dy in range(3):
        for dx in range(3):
            if (dy, dx) != (1, 1):
                others = np.maximum(others, padded[..., dy:dy + h, dx:dx + w])
    return np.abs(pre - others) <= tie_tolerance


def compare_outputs(reference: dict, candidate: dict, tolerance, relative=(), pre_peak=None,
                    tie_tolerance: float = 1e-5) -> dict:
    """Max abs error per output (relative error for names in `relative`), tie flips of `scores`
    excluded and counted under 'scores_tie_flips'. Raises ParityError naming the first output above
    its tolerance (a float, or a dict per output)."""
    report = {}
    for name in OUTPUT_NAMES:
        ref = np.asarray(reference[name], dtype=np.float64)
        got = np.asarray(candidate[name], dtype=np.float64)
        if ref.shape != got.shape:
            raise ParityError(f"output {name!r}: shape {got.shape} differs from PyTorch's {ref.shape}")
        if not np.isfinite(got).all():
            raise ParityError(f"output {name!r}: contains NaN or inf")
        err = np.abs(got - ref)
        if name in relative:
            err = err / np.maximum(1.0, np.abs(ref))
        if name == "scores":
            flips = np.zeros(err.shape, bool)
            if pre_peak is not None:
                tol = tolerance[name] if isinstance(tolerance, dict) else tolerance
                # A flip: one side kept the cell, the other zeroed it, at a near-tie; the kept value
                # must still be the cell's own score.
                kept = np.maximum(got, ref)
                flips = ((got == 0) != (ref == 0)) & _near_ties(pre_peak, tie_tolerance) \
                    & (np.abs(kept - pre_peak) <= tol)
            report["scores_tie_flips"] = int(flips.sum())
            err = np.where(flips, 0.0, err)
        report[name] = float(err.max()) if err.size else 0.0
    for name in OUTPUT_NAMES:
        tol = tolerance[name] if isinstance(tolerance, dict) else tolerance
        if report[name] > tol:
            kind = "relative" if name in relative else "abs"
            raise ParityError(f"output {name!r}: max {kind} error {report[name]:.3g} exceeds {tol:g} "
                              f"(report: {report})")
    return report


def _merge_reports(reports: list[dict]) -> dict:
    merged = {}
    for r in reports:
        for k, v in r.items():
            merged[k] = merged.get(k, 0) + v if k.endswith("flips") else max(merged.get(k, 0.0), v)
    return merged


def _torch_reference(model: torch.nn.Module, image: torch.Tensor):
    with torch.no_grad():
        out = model(image, export=True)
        return {k: out[k].numpy() for k in OUTPUT_NAMES}, _pre_peak_scores(model, image)


def check_parity(model: torch.nn.Module, onnx_path: str | os.PathLike, shapes=PARITY_SHAPES,
                 tolerance=FP32_TOLERANCE, relative=FP32_RELATIVE, tie_tolerance: float = 1e-5, seed: int = 0) -> dict:
    """Runs the ONNX under onnxruntime (CPU) and PyTorch on the same inputs of every shape in
    `shapes`; returns {output: max abs error over all shapes, 'scores_tie_flips': count, 'shapes': n}.
    Raises ParityError naming the output that exceeds `tolerance` (default 1e-4)."""
    import onnxruntime as ort
    shapes = _check_shapes(shapes)
    model = _deploy(model).model
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    reports = []
    for shape, image in _parity_inputs(shapes, seed):
        ref, pre = _torch_reference(model, image)
        got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})))
        try:
            reports.append(compare_outputs(ref, got, tolerance, relative, pre, tie_tolerance))
        except ParityError as e:
            raise ParityError(f"{onnx_path} at input shape {shape}: {e}") from None
    return {**_merge_reports(reports), "shapes": len(reports)}


def check_fp16_parity(model: torch.nn.Module, onnx_fp16_path: str | os.PathLike, shapes=PARITY_SHAPES,
                      seed: int = 0) -> dict:
    """check_parity of the fp16 ONNX against fp32 PyTorch with the fp16 bar (FP16_TOLERANCE)."""
    return check_parity(model, onnx_fp16_path, shapes, tolerance=FP16_TOLERANCE, relative=FP16_RELATIVE,
                        tie_tolerance=2e-3, seed=seed)


def check_torch_program_parity(model: torch.nn.Module, pt2_path: str | os.PathLike, shapes=PARITY_SHAPES,
                               tolerance=FP32_TOLERANCE, seed: int = 0) -> dict:
    """torch.export.load(pt2_path).module() against the eager model on every shape in `shapes`."""
    shapes = _check_shapes(shapes)
    model = _deploy(model).model
    program = torch.export.load(str(pt2_path)).module()
    reports = []
    for shape, image in _parity_inputs(shapes, seed):
        ref, pre = _torch_reference(model, image)
        with torch.no_grad():
            got = dict(zip(OUTPUT_NAMES, (t.numpy() for t in program(image))))
        try:
            reports.append(compare_outputs(ref, got, tolerance, (), pre))
        except ParityError as e:
            raise ParityError(f"{pt2_path} at input shape {shape}: {e}") from None
    return {**_merge_reports(reports), "shapes": len(reports)}


# ------------------------------------------------------------------------------ a user's ONNX file

def _ort_session(path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx_contract(onnx_path, num_classes: int, shapes=PARITY_SHAPES) -> None:
    """A user's ONNX file against docs/contract.md: the ONNX checker, the input `image`, the outputs
    `scores`, `ltrb`, `focus`, then onnxruntime at every shape in `shapes` (so height, width and batch
    must be dynamic) with model.user_network.check_outputs. Raises ContractError (a ValueError) naming
    the problem."""
    import onnx
    from model.user_network import ContractError, check_outputs
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"--onnx: no such file {path}")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as e:  # not ONNX, truncated, invalid graph
        raise ContractError(f"--onnx: {path} is not a valid ONNX model ({type(e).__name__}: {e})") from e
    inputs = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if inputs != [INPUT_NAME]:
        raise ContractError(f"--onnx: {path} must have one input named {INPUT_NAME!r} (docs/contract.md), has {inputs}")
    outputs = [o.name for o in proto.graph.output]
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        raise ContractError(f"--onnx: {path}: missing output(s) {missing}; it has {outputs} (docs/contract.md)")
    session = _ort_session(path)
    for shape, image in _parity_inputs(_check_shapes(shapes), 0):
        try:
            got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})
        except Exception as e:  # onnxruntime raises its own types for shape errors
            raise ContractError(f"--onnx: {path} does not run at input shape {shape} ({e}); its batch, height "
                                "and width must be dynamic") from e
        check_outputs(dict(zip(OUTPUT_NAMES, got)), shape, num_classes, f"--onnx {path.name}")


def check_fp16_against_onnx(onnx_path, onnx_fp16_path, shapes=PARITY_SHAPES, seed: int = 0) -> dict:
    """The fp16 ONNX against the fp32 ONNX (onnxruntime both) with the fp16 bar, where no PyTorch
    module exists to be the reference."""
    ref_session, half_session = _ort_session(onnx_path), _ort_session(onnx_fp16_path)
    reports = []
    for shape, image in _parity_inputs(_check_shapes(shapes), seed):
        ref = dict(zip(OUTPUT_NAMES, ref_session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})))
        got = dict(zip(OUTPUT_NAMES, half_session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})))
        try:
            reports.append(compare_outputs(ref, got, FP16_TOLERANCE, FP16_RELATIVE))
        except ParityError as e:
            raise ParityError(f"{onnx_fp16_path} at input shape {shape}: {e}") from None
    return {**_merge_reports(reports), "shapes": len(reports)}
