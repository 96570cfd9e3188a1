// nms: greedy non-maximum suppression. Boxes are taken by descending score (ties: lower index); a box
// is suppressed by an earlier kept box when their IoU > iou_threshold (and, with labels, same label).
#pragma once
#include <cstdint>

#include "common.h"
#include "ops/box_iou.h"

namespace autofocus {

AF_HD bool nms_suppresses(float iou, float iou_threshold) { return iou > iou_threshold; }

// labels may be null (class-agnostic). keep has room for n; returns the number kept.
int64_t nms_cpu(const float* boxes, const float* scores, const int64_t* labels, int64_t n,
                float iou_threshold, int64_t* keep);

// CUDA: device pointers; keep has room for n; the count goes to *out_count (device).
void nms_cuda(const float* boxes, const float* scores, const int64_t* labels, int64_t n, float iou_threshold,
              int64_t* keep, int64_t* out_count, std::uintptr_t stream);

}  // namespace autofocus
