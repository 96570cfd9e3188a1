"""AutoFocus against SAHI's sliced inference (the `sahi` package) around the same detector, in one run:
images/s, network-input pixels and COCO AP, as measured.

    pip install --no-deps sahi==0.12.8 shapely     # --no-deps: sahi's wheel requires opencv-python,
                                                   # which would clash with opencv-python-headless;
                                                   # sliced prediction needs shapely only (fire, yaml,
                                                   # requests serve sahi's CLI and downloads, unused)
    python benchmarks/peers.py                     # bundles/default, generated val split
    python benchmarks/peers.py --slice 512 --overlap 0.2 --postprocess GREEDYNMM --limit 50 --json peers.json

SAHI, as its users run it: get_sliced_prediction with --slice x --slice pixel slices of the original
image, --overlap of each, its full-image "standard prediction" on top (perform_standard_pred, its
default; --no-standard-pred drops it), then its postprocess (GREEDYNMM, IOS, 0.5 by default; note SAHI
itself switches to NMS/IOU when the model's confidence threshold is below its LOW_MODEL_CONFIDENCE, 0.1,
unless --force-postprocess: the table names the postprocess that ran). Its detector is a
sahi DetectionModel around our engine: each input SAHI hands it (a slice, or the whole image for the
standard prediction) runs in the engine's `single` mode at --detector-scale (default: the finest
scale), i.e. resized the way that scale resizes a whole image, on the same backend as AutoFocus;
detections below --confidence (default: the bundle's decode threshold) are dropped, as SAHI's
models do. Images go to SAHI as RGB arrays (its convention); the wrapper reorders to the engine's BGR.

Time is host wall-clock per image around get_sliced_prediction (slicing, every detector call, merge)
and around engine(image) for AutoFocus; images are decoded before timing; median over --repeats after
one warm-up image. Pixels are the network-input pixels the engine ran for each (engine.last_stats,
summed over SAHI's detector calls). AP from pycocotools on the first repeat's detections.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python benchmarks/peers.py`: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, fps

SAHI_INSTALL = "pip install --no-deps sahi==0.12.8 shapely"
POSTPROCESS = ("GREEDYNMM", "NMM", "NMS", "LSNMS")
MATCH_METRICS = ("IOS", "IOU")


def sahi_unavailable_reason() -> str | None:
    """None when sahi and the modules its sliced prediction imports load, else why not (with the fix)."""
    try:
        import sahi.models.base  # noqa: F401
        import sahi.predict  # noqa: F401
    except ImportError as e:
        return (f"sahi is not usable here ({e}); install it without its opencv-python requirement "
                f"(it would clash with opencv-python-headless): {SAHI_INSTALL}")
    return None


def require_sahi() -> None:
    reason = sahi_unavailable_reason()
    if reason is not None:
        raise ImportError(reason)


def engine_detection_model(engine, scale: int, confidence: float):
    """A sahi DetectionModel whose every inference is engine(image, mode="single", scale=scale).
    Its `pixels` attribute sums the engine's (real, padded) input pixels over the calls."""
    require_sahi()
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class EngineDetectionModel(DetectionModel):
        def set_model(self, model, **kwargs):
            self.model = model
            self.category_mapping = {str(i): name for i, name in enumerate(model.classes)}
            self.pixels = [0, 0]

        def load_model(self):
            raise ValueError("EngineDetectionModel: pass model=<AutoFocusEngine>")

        def perform_inference(self, image: np.ndarray):
            # SAHI hands over RGB arrays; the engine takes BGR.
            self._original_predictions = self.model(np.ascontiguousarray(image[..., ::-1]), mode="single",
                                                    scale=scale)
            real, padded = common.pixels(self.model.last_stats)
            self.pixels[0] += real
            self.pixels[1] += padded

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=[[0, 0]],
                                                                     full_shape_list=None):
            det = self._original_predictions
            shift = shift_amount_list[0] if shift_amount_list and isinstance(shift_amount_list[0], list) \
                else (shift_amount_list or [0, 0])
            full = full_shape_list[0] if full_shape_list and isinstance(full_shape_list[0], list) \
                else full_shape_list
            preds = []
            for box, score, lab in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
                if score < self.confidence_threshold:
                    continue
                if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
                    continue  # sahi refuses empty boxes
                preds.append(ObjectPrediction(bbox=box, category_id=int(lab), category_name=self.category_mapping[str(lab)],
                                              score=score, shift_amount=list(shift), full_shape=full))
            self._object_prediction_list_per_image = [preds]

    return EngineDetectionModel(model=engine, confidence_threshold=confidence, device=engine.device,
                                load_at_init=True)


def effective_postprocess(postprocess: str, metric: str, confidence: float, force: bool) -> tuple[str, str]:
    """The (type, metric) sahi's get_sliced_prediction really uses (its own switch, restated)."""
    from sahi.predict import LOW_MODEL_CONFIDENCE
    if not force and confidence < LOW_MODEL_CONFIDENCE and postprocess != "NMS":
        return "NMS", "IOU"
    return postprocess, metric


def run_sahi(model, eval_set: common.EvalSet, settings: dict, repeats: int, progress: bool = True) -> dict:
    """Times SAHI's sliced prediction over the set; returns figures like fps.summarise plus AP."""
    import logging

    from sahi.predict import get_sliced_prediction
    logging.getLogger("sahi").setLevel(logging.ERROR)  # its low-confidence switch warns on every image

    def one(rgb):
        result = get_sliced_prediction(rgb, model, slice_height=settings["slice"], slice_width=settings["slice"],
                                       overlap_height_ratio=settings["overlap"], overlap_width_ratio=settings["overlap"],
                                       perform_standard_pred=settings["standard_pred"],
                                       postprocess_type=settings["postprocess"],
                                       postprocess_match_metric=settings["match_metric"],
                                       postprocess_match_threshold=settings["match_threshold"],
                                       force_postprocess_type=settings["force_postprocess"], verbose=0)
        return result.object_prediction_list

    rgbs = [np.ascontiguousarray(im[..., ::-1]) for im in eval_set.images]
    one(rgbs[0])  # warm-up
    seconds, detections, pixels = [], {}, [0, 0]
    with tqdm(total=repeats * len(rgbs), desc="sahi", unit="image", disable=not progress, file=sys.stderr) as bar:
        for r in range(repeats):
            elapsed = 0.0
            for info, rgb in zip(eval_set.infos, rgbs):
                model.pixels = [0, 0]
                start = time.perf_counter()
                preds = one(rgb)
                elapsed += time.perf_counter() - start
                if r == 0:
                    detections[info["id"]] = to_detections(preds)
                    pixels = [pixels[0] + model.pixels[0], pixels[1] + model.pixels[1]]
                bar.update(1)
            seconds.append(elapsed)
    n = len(rgbs)
    median = statistics.median(seconds)
    out = {"images_per_s": n / median, "images_per_s_min": n / max(seconds), "images_per_s_max": n / min(seconds),
           "seconds_per_repeat": seconds, "seconds_median": median, "pixels_per_image": pixels[0] / n,
           "padded_pixels_per_image": pixels[1] / n, "postprocess_share": None}
    out.update(common.coco_metrics(eval_set, detections))
    return out


def to_detections(preds):
    from runtime import Detections
    boxes = [p.bbox.to_xyxy() for p in preds]
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), [p.score.value for p in preds],
                      [p.category.id for p in preds])


def compare(engine, eval_set, settings: dict, modes: str = "autofocus,sniper", repeats: int = 3,
            progress: bool = True) -> dict:
    """{name: figures}: the engine's modes (fps.benchmark) and "sahi", ratios against sniper if run."""
    model = engine_detection_model(engine, settings["detector_scale"], settings["confidence"])
    results = fps.benchmark(engine, eval_set, fps.parse_modes(modes, len(engine.params.scales)), repeats,
                            progress=progress)
    results["sahi"] = run_sahi(model, eval_set, settings, repeats, progress)
    fps.add_ratios(results)
    return results


def format_results(results: dict) -> str:
    headers = ["method", "images/s", "(min-max)", "x sniper", "Mpx/img", "padded", "px/sniper", "AP", "AP50",
               "APs", "APm", "APl"]
    opt = fps._opt
    rows = [[name, f"{r['images_per_s']:.2f}", f"{r['images_per_s_min']:.2f}-{r['images_per_s_max']:.2f}",
             opt(r["speedup_vs_sniper"], ".2f"), f"{r['pixels_per_image'] / 1e6:.3f}",
             f"{r['padded_pixels_per_image'] / 1e6:.3f}", opt(r["pixels_vs_sniper"], ".3f"),
             *(f"{r[k]:.1f}" for k in ("AP", "AP50", "APs", "APm", "APl"))] for name, r in results.items()]
    return common.format_table(headers, rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/peers.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(p)
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the images")
    p.add_argument("--modes", default="autofocus,sniper", help="engine modes beside SAHI (fps.py's names)")
    p.add_argument("--slice", type=int, default=512, help="SAHI slice side in original pixels (default 512)")
    p.add_argument("--overlap", type=float, default=0.2, help="SAHI overlap ratio of slices (default 0.2)")
    p.add_argument("--no-standard-pred", action="store_true", help="no full-image prediction on top of slices")
    p.add_argument("--postprocess", choices=POSTPROCESS, default="GREEDYNMM", help="SAHI merge (default GREEDYNMM)")
    p.add_argument("--match-metric", choices=MATCH_METRICS, default="IOS", help="SAHI match metric (default IOS)")
    p.add_argument("--match-threshold", type=float, default=0.5, help="SAHI match threshold (default 0.5)")
    p.add_argument("--force-postprocess", action="store_true",
                   help="keep --postprocess even below SAHI's low-confidence limit (0.1)")
    p.add_argument("--confidence", type=float, help="detector score floor (default: the bundle's decode threshold)")
    p.add_argument("--detector-scale", type=int, help="engine scale each SAHI input runs at (default: the finest)")
    common.add_output_arguments(p, "the figures, settings, machine and versions")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        require_sahi()
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    try:
        if args.slice < 32:
            raise ValueError(f"--slice: expected a slice side >= 32 pixels, got {args.slice}")
        if not 0 <= args.overlap < 1:
            raise ValueError(f"--overlap: expected a ratio in [0, 1), got {args.overlap}")
        engine = common.open_engine(args.bundle, args.backend, args.device)
        scales = len(engine.params.scales)
        scale = args.detector_scale if args.detector_scale is not None else scales
        if not 1 <= scale <= scales:
            raise ValueError(f"--detector-scale: expected 1..{scales}, got {scale}")
        confidence = args.confidence if args.confidence is not None else engine.params.decode["score_threshold"]
        post, metric = effective_postprocess(args.postprocess, args.match_metric, confidence, args.force_postprocess)
        settings = {"slice": args.slice, "overlap": args.overlap, "standard_pred": not args.no_standard_pred,
                    "postprocess": args.postprocess, "match_metric": args.match_metric,
                    "match_threshold": args.match_threshold, "force_postprocess": args.force_postprocess,
                    "postprocess_used": post, "match_metric_used": metric, "confidence": confidence,
                    "detector_scale": scale, "detector_scale_size": list(engine.params.scales[scale - 1])}
        eval_set = common.eval_set_from_args(args)
        results = compare(engine, eval_set, settings, args.modes, args.repeats, progress=not args.no_progress)
    except common.USER_ERRORS as e:
        return common.user_error(e)
    import sahi
    print(f"{len(eval_set.infos)} images from {eval_set.coco.annotations_path}; backend {engine.backend_name} on "
          f"{engine.device}; {args.repeats} repeat(s)")
    print(f"sahi {sahi.__version__}: {args.slice}x{args.slice} slices, overlap {args.overlap}, standard pred "
          f"{'on' if settings['standard_pred'] else 'off'}, postprocess {post}/{metric} {args.match_threshold}, "
          f"detector = engine single scale {scale} {settings['detector_scale_size']}, confidence >= {confidence:g}")
    print(format_results(results))
    if args.json:
        record = {"bundle": str(engine.bundle.folder), "annotations": str(eval_set.coco.annotations_path),
                  "images": len(eval_set.infos), "backend": engine.backend_name, "device": engine.device,
                  "repeats": args.repeats, "sahi": settings, "machine": common.machine(),
                  "versions": common.versions(extra=("sahi", "shapely")), "methods": results}
        common.write_json(args.json, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
