"""Times every post-processing op on realistic sizes, on the CPU (and CUDA where present), against the
OpenCV / NumPy path a user would otherwise write, and prints one table of medians and ratios.

    python benchmarks/ops.py [--repeats 30] [--json FILE]

Sizes: a focus map of 88 x 125 cells (a 1400 x 2000 scale at stride 16), 2,000 boxes for NMS and
Soft-NMS, 32 chips for crop-resize, a 5-class stride-8 output of a 512 x 512 chip for decode.

With a GPU it also prints the kernels' own device time (CUDA events around calls enqueued back to back,
no argument checks and no host reads) for the two targets of issue 20: Algorithm 1 on a batch of 8 focus
maps (<= 50 us) and Soft-NMS on 2,000 boxes of one class (<= 0.3 ms).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import cv2
import numpy as np

from runtime import ops

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- inputs ------------------------------------------------------------------------------------

def focus_map(rng, h=88, w=125) -> np.ndarray:
    """A few Gaussian blobs of 'small object' probability on a low background, like a trained map."""
    yy, xx = np.mgrid[:h, :w]
    prob = 0.01 * rng.random((h, w))
    for _ in range(5):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 6)
        prob = np.maximum(prob, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    return prob.astype(np.float32)


def clustered_boxes(rng, n=2000, labels=5):
    """Boxes around 100 objects (about 20 detections each), as a detector's raw output looks."""
    centres = rng.uniform(0, 1000, (100, 2))
    sizes = rng.uniform(8, 120, (100, 2))
    pick = rng.integers(0, 100, n)
    c = centres[pick] + rng.normal(0, 4, (n, 2))
    s = sizes[pick] * rng.uniform(0.8, 1.2, (n, 2))
    boxes = np.concatenate([c - s / 2, c + s / 2], 1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32), rng.integers(0, labels, n).astype(np.int32)


# ---- the OpenCV / NumPy path (what the ops replace) -----------------------------------------------

def numpy_nms(boxes, scores, iou_threshold):
    """The classic vectorised NumPy NMS (py_cpu_nms)."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter) <= iou_threshold]
    return np.asarray(keep)


def numpy_soft_nms(boxes, scores, sigma=0.55, score_threshold=0.001):
    """The classic NumPy Gaussian Soft-NMS loop (as in the authors' reference code), class-agnostic."""
    x1, y1, x2, y2 = boxes.T.astype(np.float64)
    area = (x2 - x1) * (y2 - y1)
    current = scores.astype(np.float64).copy()
    alive = np.flatnonzero(current >= score_threshold)
    keep = []
    while alive.size:
        m = alive[np.argmax(current[alive])]
        keep.append(m)
        alive = alive[alive != m]
        w = np.clip(np.minimum(x2[m], x2[alive]) - np.maximum(x1[m], x1[alive]), 0, None)
        h = np.clip(np.minimum(y2[m], y2[alive]) - np.maximum(y1[m], y1[alive]), 0, None)
        iou = w * h / (area[m] + area[alive] - w * h)
        current[alive] *= np.exp(-iou * iou / sigma)
        alive = alive[current[alive] >= score_threshold]
    return np.asarray(keep)


def opencv_focus_chips(prob, threshold, dilation, min_size):
    """Algorithm 1 with OpenCV for dilation and components, the loop in Python."""
    h, w = prob.shape
    mask = cv2.dilate((prob >= threshold).astype(np.uint8), np.ones((dilation, dilation), np.uint8))
    count = -1
    rects = []
    while True:
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        rects = []
        for x, y, bw, bh, _ in stats[1:]:
            x1, x2 = _grow(x, x + bw, min_size, w)
            y1, y2 = _grow(y, y + bh, min_size, h)
            rects.append((x1, y1, x2, y2))
        if len(rects) == count:
            return np.asarray(rects, np.int32).reshape(-1, 4)
        count = len(rects)
        mask = np.zeros_like(mask)
        for x1, y1, x2, y2 in rects:
            mask[y1:y2, x1:x2] = 1


def _grow(lo, hi, k, size):
    if hi - lo < k:
        lo -= (k - (hi - lo)) // 2
        hi = lo + k
    if lo < 0:
        hi, lo = hi - lo, 0
    if hi > size:
        lo, hi = lo - (hi - size), size
    return max(lo, 0), min(hi, size)


def opencv_crop_resize(image, chips, scale, out_hw):
    """cv2.warpAffine per chip (uint8), then BGR->RGB and normalisation in NumPy."""
    out = np.zeros((len(chips), 3) + out_hw, np.float32)
    mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
    for i, (x1, y1, x2, y2) in enumerate(chips):
        oh, ow = round((y2 - y1) * scale), round((x2 - x1) * scale)
        inverse = np.array([[1 / scale, 0, x1 + 0.5 / scale - 0.5], [0, 1 / scale, y1 + 0.5 / scale - 0.5]])
        warped = cv2.warpAffine(image, inverse, (ow, oh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        out[i, :, :oh, :ow] = ((warped[:, :, ::-1] / np.float32(255) - mean) / std).transpose(2, 0, 1)
    return out


def numpy_decode(scores, ltrb, stride, threshold, max_candidates):
    """np.nonzero + argsort over one image's stride-8 output."""
    c, y, x = np.nonzero(scores[0] > threshold)
    s = scores[0, c, y, x]
    order = np.argsort(-s, kind="stable")[:max_candidates]
    c, y, x, s = c[order], y[order], x[order], s[order]
    cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
    l, t, r, b = ltrb[0][:, y, x]
    return np.stack([cx - l, cy - t, cx + r, cy + b], 1), s, c


def numpy_stack_prune(boxes, chip, image_hw):
    c1, d1, c2, d2 = chip
    h, w = image_hw
    x1, y1 = np.maximum(boxes[:, 0], c1), np.maximum(boxes[:, 1], d1)
    x2, y2 = np.minimum(boxes[:, 2], c2), np.minimum(boxes[:, 3], d2)
    return ((x2 > x1) & (y2 > y1) & ((x1 > c1) | (c1 <= 0)) & ((y1 > d1) | (d1 <= 0))
            & ((x2 < c2) | (c2 >= w)) & ((y2 < d2) | (d2 >= h)))


def numpy_paint_boxes(maps, boxes, index, stride):
    out = maps.copy()
    x1 = np.clip(np.floor(boxes[:, 0] / stride), 0, maps.shape[2]).astype(int)
    y1 = np.clip(np.floor(boxes[:, 1] / stride), 0, maps.shape[1]).astype(int)
    x2 = np.clip(np.ceil(boxes[:, 2] / stride), 0, maps.shape[2]).astype(int)
    y2 = np.clip(np.ceil(boxes[:, 3] / stride), 0, maps.shape[1]).astype(int)
    for b, a, c, d, e in zip(index, x1, y1, x2, y2):
        out[b, c:e, a:d] = 1.0
    return out


# ---- timing ------------------------------------------------------------------------------------

def median_ms(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up (and first-call allocations)
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cases(rng):
    """(op, size, ours(arrays), reference(), arrays) for every op."""
    prob = focus_map(rng)
    mask = (prob >= 0.2).astype(np.uint8)
    dilated = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    boxes, scores, labels = clustered_boxes(rng)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    chip_xy = rng.uniform(0, [440, 300], (32, 2))
    chips = np.concatenate([chip_xy, chip_xy + rng.uniform(160, 200, (32, 2))], 1).astype(np.float32)
    out_hw = (640, 640)
    det_scores = (rng.random((1, 5, 64, 64)) ** 8).astype(np.float32)  # sparse peaks, ~2% above 0.05... 0.6
    det_ltrb = rng.uniform(2, 60, (1, 4, 64, 64)).astype(np.float32)
    chip = np.array([200, 150, 700, 650], np.float32)
    maps = np.stack([focus_map(rng) for _ in range(4)])
    batch_maps = np.stack([focus_map(rng) for _ in range(8)])
    batch_valid = np.array([[88, 125]] * 8, np.int32)
    paint = boxes[:300] * np.float32(0.5)  # 300 boxes over 4 maps of 88 x 125 cells (1,408 x 2,000 px)
    paint_index = rng.integers(0, 4, 300).astype(np.int64)
    return [
        ("dilate", "88x125, d=3", lambda a: ops.dilate(a["mask"], 3),
         lambda: cv2.dilate(mask, np.ones((3, 3), np.uint8)), {"mask": mask}),
        ("connected_components", "88x125", lambda a: ops.connected_components(a["mask"]),
         lambda: cv2.connectedComponentsWithStats(dilated, connectivity=8), {"mask": dilated}),
        ("focus_chips", "88x125, t=0.2 d=3 k=20", lambda a: ops.focus_chips(a["prob"], 0.2, 3, 20),
         lambda: opencv_focus_chips(prob, 0.2, 3, 20), {"prob": prob}),
        ("focus_chips_batched", "8 maps 88x125, t=0.2 d=3 k=20",
         lambda a: ops.focus_chips_batched(a["probs"], a["valid"], 0.2, 3, 20),
         lambda: [opencv_focus_chips(p, 0.2, 3, 20) for p in batch_maps], {"probs": batch_maps, "valid": batch_valid}),
        ("crop_resize", "32 chips -> 640x640 fp32", lambda a: ops.crop_resize(
            a["image"], a["chips"], np.full(32, 2.9, np.float32), out_hw, MEAN, STD),
         lambda: opencv_crop_resize(image, chips, 2.9, out_hw), {"image": image, "chips": chips}),
        ("decode", "5x64x64, t=0.05", lambda a: ops.decode(a["scores"], a["ltrb"], 8, 0.05, 1000),
         lambda: numpy_decode(det_scores, det_ltrb, 8, 0.05, 1000), {"scores": det_scores, "ltrb": det_ltrb}),
        ("nms", "2,000 boxes, IoU 0.5", lambda a: ops.nms(a["boxes"], a["scores"], 0.5),
         lambda: numpy_nms(boxes, scores, 0.5), {"boxes": boxes, "scores": scores}),
        ("soft_nms", "2,000 boxes, gaussian", lambda a: ops.soft_nms(a["boxes"], a["scores"]),
         lambda: numpy_soft_nms(boxes, scores), {"boxes": boxes, "scores": scores}),
        ("stack_prune", "2,000 boxes", lambda a: ops.stack_prune(a["boxes"], a["chip"], (1400, 1867)),
         lambda: numpy_stack_prune(boxes, chip, (1400, 1867)), {"boxes": boxes, "chip": chip}),
        ("paint_boxes", "300 boxes, 4 maps 88x125", lambda a: ops.paint_boxes(a["maps"], a["boxes"], a["index"], 16),
         lambda: numpy_paint_boxes(maps, paint, paint_index, 16),
         {"maps": maps, "boxes": paint, "index": paint_index}),
        ("top_k", "2,000 scores, k=200", lambda a: ops.top_k(a["scores"], 200),
         lambda: np.argsort(-scores, kind="stable")[:200], {"scores": scores}),
    ]


def run(repeats: int = 30, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    cuda = None
    try:
        import torch
        if torch.cuda.is_available() and ops.with_cuda():
            cuda = torch
    except ImportError:
        pass
    rows = []
    for op, size, ours, reference, arrays in cases(rng):
        row = {"op": op, "size": size,
               "cpu_ms": median_ms(lambda: ours(arrays), repeats),
               "reference_ms": median_ms(reference, max(3, repeats // 5))}
        row["speedup"] = row["reference_ms"] / row["cpu_ms"]
        if cuda is not None:
            on_gpu = {k: cuda.from_numpy(np.ascontiguousarray(v)).cuda() for k, v in arrays.items()}
            row["cuda_ms"] = median_ms(lambda: ours(on_gpu), repeats, sync=cuda.cuda.synchronize)
        rows.append(row)
    return rows


def device_ms(enqueue, torch, repeats: int, calls: int = 20) -> float:
    """Median device time of one call: `calls` calls enqueued back to back between two CUDA events."""
    enqueue()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            enqueue()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def kernel_rows(torch, repeats: int, seed: int = 1) -> list[dict]:
    """Device time of the focus_chips and Soft-NMS kernels through runtime._C (issue 20's targets)."""
    from runtime import _C
    rng = np.random.default_rng(seed)
    stream = torch.cuda.current_stream().cuda_stream
    cuda = lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda()  # noqa: E731
    rows = []
    batch = 8
    probs = cuda(np.stack([focus_map(rng) for _ in range(batch)]))
    valid = cuda(np.array([[88, 125]] * batch, np.int32))
    rows_out = batch * ((88 + 1) // 2) * ((125 + 1) // 2)
    chips = torch.empty((rows_out, 4), dtype=torch.int32, device="cuda")
    index = torch.empty((rows_out,), dtype=torch.int32, device="cuda")
    status = torch.empty(2, dtype=torch.int32, device="cuda")
    rows.append({"kernel": "focus_chips_batched_cuda", "size": "8 maps 88x125, t=0.2 d=3 k=20", "target_ms": 0.05,
                 "device_ms": device_ms(lambda: _C.focus_chips_batched_cuda(
                     probs.data_ptr(), valid.data_ptr(), batch, 88, 125, 0.2, 3, 20, chips.data_ptr(),
                     index.data_ptr(), status.data_ptr(), stream), torch, repeats)})
    boxes, scores, _ = clustered_boxes(rng)
    boxes, scores = cuda(boxes), cuda(scores)
    n = boxes.shape[0]
    keep = torch.empty((n,), dtype=torch.int64, device="cuda")
    out = torch.empty((n,), dtype=torch.float32, device="cuda")
    count = torch.empty((1,), dtype=torch.int64, device="cuda")
    rows.append({"kernel": "soft_nms_cuda", "size": "2,000 boxes, one class, gaussian", "target_ms": 0.3,
                 "device_ms": device_ms(lambda: _C.soft_nms_cuda(
                     boxes.data_ptr(), scores.data_ptr(), 0, n, 1, 0.55, 0.3, 0.001, -1, keep.data_ptr(),
                     out.data_ptr(), count.data_ptr(), stream), torch, repeats)})
    for r in rows:
        r["of_target"] = r["device_ms"] / r["target_ms"]
    return rows


def format_kernel_table(rows) -> str:
    head = f"{'kernel (device time)':<28}{'size':<36}{'device ms':>11}{'target ms':>11}{'of target':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['kernel']:<28}{r['size']:<36}{r['device_ms']:>11.4f}{r['target_ms']:>11.3f}"
                     f"{r['of_target']:>10.2f}x")
    return "\n".join(lines)


def format_table(rows) -> str:
    has_cuda = any("cuda_ms" in r for r in rows)
    head = f"{'op':<22}{'size':<28}{'ours CPU ms':>12}{'OpenCV/NumPy ms':>17}{'speed-up':>10}"
    head += f"{'ours CUDA ms':>14}" if has_cuda else ""
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['op']:<22}{r['size']:<28}{r['cpu_ms']:>12.4f}{r['reference_ms']:>17.4f}"
                f"{r['speedup']:>9.1f}x")
        if has_cuda:
            line += f"{r.get('cuda_ms', float('nan')):>14.4f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Post-processing op timings against OpenCV/NumPy")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    rows = run(args.repeats)
    print(f"machine: {platform.processor() or platform.machine()}, cuda kernels built: {ops.with_cuda()}")
    print(format_table(rows))
    kernels = []
    try:
        import torch
        if torch.cuda.is_available() and ops.with_cuda():
            kernels = kernel_rows(torch, args.repeats)
            print()
            print(format_kernel_table(kernels))
    except ImportError:
        pass
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "rows": rows, "kernels": kernels}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
