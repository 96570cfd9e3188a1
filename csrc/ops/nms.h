// nms: greedy non-maximum suppression. Boxes are taken by descending score (ties: lower index); a box
// is suppressed by an earlier kept box when their IoU > iou_threshold (and, with labels, same label).
#pragma once
#include <cstdint>

#include "common.h"
#include "ops/box_iou.h"

namespace autofocus {

AF_HD bool nms_suppresses(float iou, float iou_threshold) { return iou > iou_threshold; }

// The CUDA kernel's suppression mask holds n * ceil(n / 64) 64-bit words, n^2 / 8 bytes: 100,000 boxes
// would be 1.2 GB. Beyond kNmsMaxMaskBytes the CUDA nms refuses with a ValueError instead of trying.
constexpr int64_t kNmsMaxMaskBytes = int64_t{1} << 30;
inline int64_t nms_mask_bytes(int64_t n) { return n * ((n + 63) / 64) * 8; }
inline void check_nms_size(int64_t n) {
  check_arg(n >= 0, "nms: expected a box count >= 0, got " + std::to_string(n));
  check_arg(n <= (int64_t{1} << 24) && nms_mask_bytes(n) <= kNmsMaxMaskBytes,
            "nms: " + std::to_string(n) + " boxes need a " + std::to_string(nms_mask_bytes(n) >> 20) +
                " MiB suppression mask on the GPU (limit " + std::to_string(kNmsMaxMaskBytes >> 20) +
                " MiB, about 92,000 boxes): keep fewer candidates (score threshold, top-k) or run nms on the CPU");
}

// labels may be null (class-agnostic). keep has room for n; returns the number kept.
int64_t nms_cpu(const float* boxes, const float* scores, const int64_t* labels, int64_t n,
                float iou_threshold, int64_t* keep);

// CUDA: device pointers; keep has room for n; the count goes to *out_count (device).
void nms_cuda(const float* boxes, const float* scores, const int64_t* labels, int64_t n, float iou_threshold,
              int64_t* keep, int64_t* out_count, std::uintptr_t stream);

}  // namespace autofocus
