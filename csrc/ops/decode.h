// decode: the network's dense (scores, ltrb) outputs -> scored boxes in original-image pixels
// (docs/contract.md). Per image: cells with score > score_threshold, the max_candidates highest, by
// descending score with ties broken by the smaller flat index (c, y, x); images in order.
#pragma once
#include <cstdint>

#include "common.h"
#include "ops/box_iou.h"

namespace autofocus {

// The candidate test, in double so that it agrees with a float64 reference at the threshold itself.
AF_HD bool decode_is_candidate(float score, double score_threshold) {
  return static_cast<double>(score) > score_threshold;
}

// One cell (y, x) of one image: the box [cx - l, cy - t, cx + r, cy + b] around the cell centre
// ((x + .5) * stride, (y + .5) * stride) in input pixels, then box / scale + offset (original pixels).
// ltrb points at this image's (4, height, width) block.
AF_HD void decode_cell(const float* ltrb, int64_t height, int64_t width, int64_t y, int64_t x, float stride,
                       float scale, float offset_x, float offset_y, float* box) {
  const int64_t plane = height * width;
  const int64_t cell = y * width + x;
  const float cx = exact_mul(static_cast<float>(x) + 0.5f, stride);
  const float cy = exact_mul(static_cast<float>(y) + 0.5f, stride);
  box[0] = (cx - ltrb[cell]) / scale + offset_x;
  box[1] = (cy - ltrb[plane + cell]) / scale + offset_y;
  box[2] = (cx + ltrb[2 * plane + cell]) / scale + offset_x;
  box[3] = (cy + ltrb[3 * plane + cell]) / scale + offset_y;
}

// Capacity the caller allocates for the outputs: images * min(max_candidates, classes * height * width).
inline int64_t decode_capacity(int64_t images, int64_t classes, int64_t height, int64_t width,
                               int64_t max_candidates) {
  const int64_t cells = classes * height * width;
  return images * (max_candidates < cells ? max_candidates : cells);
}

// scores (images, classes, height, width), ltrb (images, 4, height, width), scales (images,),
// offsets (images, 2) as (x0, y0). Writes up to decode_capacity() rows; returns how many.
int64_t decode_cpu(const float* scores, const float* ltrb, int64_t images, int64_t classes, int64_t height,
                   int64_t width, float stride, double score_threshold, int64_t max_candidates,
                   const float* scales, const float* offsets, float* out_boxes, float* out_scores,
                   int32_t* out_labels, int32_t* out_batch_index);

// CUDA: same arguments as device pointers. out_count: 3 int64 on the device, zeroed by the caller: the
// number of rows written, then 1 where a score (any cell) or a decoded box (any row written) is not finite.
void decode_cuda(const float* scores, const float* ltrb, int64_t images, int64_t classes, int64_t height,
                 int64_t width, float stride, double score_threshold, int64_t max_candidates,
                 const float* scales, const float* offsets, float* out_boxes, float* out_scores,
                 int32_t* out_labels, int32_t* out_batch_index, int64_t* out_count, std::uintptr_t stream);

}  // namespace autofocus
