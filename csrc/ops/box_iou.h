// Box arithmetic shared by every box op, CPU and CUDA: one definition of a product, an area and an
// IoU, so the CPU kernels compute bit-for-bit what the GPU computes (up to expf's last ulp).
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"

namespace autofocus {

// A product that is never fused with a neighbouring add: nvcc contracts a*b+c into an FMA by default,
// which would round differently from the CPU build.
AF_HD float exact_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// Boxes are [x1, y1, x2, y2], continuous coordinates, area = (x2 - x1) * (y2 - y1) (no +1).
AF_HD float box_area(const float* b) { return exact_mul(b[2] - b[0], b[3] - b[1]); }

// Intersection over union; 0 for disjoint or touching boxes, and 0 when both boxes have zero area.
AF_HD float box_iou(const float* a, float area_a, const float* b, float area_b) {
  const float w = fminf(a[2], b[2]) - fmaxf(a[0], b[0]);
  const float h = fminf(a[3], b[3]) - fmaxf(a[1], b[1]);
  if (w <= 0.f || h <= 0.f) return 0.f;
  const float inter = exact_mul(w, h);
  const float uni = (area_a + area_b) - inter;
  return uni > 0.f ? inter / uni : 0.f;
}

AF_HD float box_iou(const float* a, const float* b) { return box_iou(a, box_area(a), b, box_area(b)); }

// Order of "higher score first, then lower index": true when (sa, ia) is taken before (sb, ib).
AF_HD bool score_before(float sa, int64_t ia, float sb, int64_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

}  // namespace autofocus
