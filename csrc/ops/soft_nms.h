// soft_nms (Bodla et al. 2017, docs/design.md "Soft-NMS"): repeatedly take the remaining box with the highest
// current score (ties: lower index), output it with that score, and multiply every other remaining box
// of the same label (any label when labels is null) by a weight of its IoU with the taken box; boxes
// whose score is below score_threshold (originally or after a decay) are dropped, never output.
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"
#include "ops/box_iou.h"

namespace autofocus {

enum SoftNmsMethod : int { kSoftNmsLinear = 0, kSoftNmsGaussian = 1, kSoftNmsHard = 2 };

// The decay weight of a box whose IoU with the taken box is iou. Gaussian: exp(-iou^2 / sigma)
// (sigma as written in the authors' code, not 2 sigma^2); linear: 1 - iou above the threshold;
// hard: 0 above the threshold (plain NMS). Every method gives exactly 1 at iou = 0.
AF_HD float soft_nms_weight(float iou, int method, float sigma, float iou_threshold) {
  if (method == kSoftNmsGaussian) return expf(-exact_mul(iou, iou) / sigma);
  if (iou > iou_threshold) return method == kSoftNmsLinear ? 1.f - iou : 0.f;
  return 1.f;
}

// A decayed (or original) score that is still kept.
AF_HD bool soft_nms_alive(float score, float score_threshold) { return !(score < score_threshold); }

// labels may be null. keep / out_scores have room for n; returns the number output.
// max_output < 0: no limit.
int64_t soft_nms_cpu(const float* boxes, const float* scores, const int64_t* labels, int64_t n, int method,
                     float sigma, float iou_threshold, float score_threshold, int64_t max_output,
                     int64_t* keep, float* out_scores);

// CUDA: device pointers; the count goes to *out_count (device).
void soft_nms_cuda(const float* boxes, const float* scores, const int64_t* labels, int64_t n, int method,
                   float sigma, float iou_threshold, float score_threshold, int64_t max_output, int64_t* keep,
                   float* out_scores, int64_t* out_count, std::uintptr_t stream);

// Segmented: segment s is the boxes [offsets[s], offsets[s + 1]) (offsets non-decreasing, offsets[0] = 0,
// offsets[segments] <= n: boxes beyond it belong to no segment), each run as its own soft_nms with
// max_output. Segment s writes its outputs (indices into all n boxes, in the order taken) to the slots
// keep/out_scores[offsets[s] ...], its count to counts[s], and fills its unused slots with -1 / 0 (the
// caller fills the slots beyond offsets[segments]): one fixed layout, no host read to size outputs.
void soft_nms_segments_cpu(const float* boxes, const float* scores, const int64_t* labels, const int64_t* offsets,
                           int64_t segments, int method, float sigma, float iou_threshold, float score_threshold,
                           int64_t max_output, int64_t* keep, float* out_scores, int64_t* counts);

// CUDA, segmented: one thread block per segment; n = offsets[segments] (passed, not read back).
void soft_nms_segments_cuda(const float* boxes, const float* scores, const int64_t* labels, const int64_t* offsets,
                            int64_t segments, int64_t n, int method, float sigma, float iou_threshold,
                            float score_threshold, int64_t max_output, int64_t* keep, float* out_scores,
                            int64_t* counts, std::uintptr_t stream);

}  // namespace autofocus
