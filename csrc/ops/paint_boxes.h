// paint_boxes: raise to 1 the stride-`stride` map cells that boxes cover (detection-guided FocusChips:
// the coarser scale's detections that the finer scale is valid for mark their own boxes in the focus
// map before Algorithm 1). Box k, [x1, y1, x2, y2] in input pixels of map index[k], covers the cells
// [floor(x1 / stride), ceil(x2 / stride)) x [floor(y1 / stride), ceil(y2 / stride)), clipped to the map.
// Boxes with keep[k] == 0, zero width or height, or an index outside [0, maps) paint nothing.
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"

namespace autofocus {

AF_HD void paint_box(const float* box, int64_t map, int64_t maps, int64_t height, int64_t width, double stride,
                     float* out) {
  if (map < 0 || map >= maps) return;
  if (!(box[2] > box[0] && box[3] > box[1])) return;  // empty box
  // In double: the cell bounds are compared exactly as a float64 reference would compute them.
  const double fx1 = floor(static_cast<double>(box[0]) / stride), fy1 = floor(static_cast<double>(box[1]) / stride);
  const double fx2 = ceil(static_cast<double>(box[2]) / stride), fy2 = ceil(static_cast<double>(box[3]) / stride);
  const int64_t x1 = static_cast<int64_t>(fmin(fmax(fx1, 0.0), static_cast<double>(width)));
  const int64_t y1 = static_cast<int64_t>(fmin(fmax(fy1, 0.0), static_cast<double>(height)));
  const int64_t x2 = static_cast<int64_t>(fmin(fmax(fx2, 0.0), static_cast<double>(width)));
  const int64_t y2 = static_cast<int64_t>(fmin(fmax(fy2, 0.0), static_cast<double>(height)));
  float* plane = out + map * height * width;
  for (int64_t y = y1; y < y2; ++y)
    for (int64_t x = x1; x < x2; ++x) plane[y * width + x] = 1.0f;
}

// out: (maps, height, width) float32, painted in place (holds the maps on entry). boxes (n, 4) float32,
// index (n,) int64, keep (n,) uint8 or null (all kept).
void paint_boxes_cpu(float* out, int64_t maps, int64_t height, int64_t width, const float* boxes,
                     const int64_t* index, const uint8_t* keep, int64_t n, double stride);

void paint_boxes_cuda(float* out, int64_t maps, int64_t height, int64_t width, const float* boxes,
                      const int64_t* index, const uint8_t* keep, int64_t n, double stride, std::uintptr_t stream);

}  // namespace autofocus
