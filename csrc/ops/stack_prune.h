// stack_prune: which detections of a chip survive focus stacking (docs/design.md "Focus stacking rules").
// Boxes and chips are in original-image pixels. A box is clipped to its chip; it is kept when the
// clipped box has positive area and each clipped side is strictly inside the chip or lies on a chip
// side that is also the image border (chip x1 <= 0, y1 <= 0, x2 >= width, y2 >= height); optionally
// also valid_lo <= sqrt(area of the unclipped box) <= valid_hi (the SNIP valid range of the scale).
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"

namespace autofocus {

AF_HD bool stack_prune_keep(const float* box, const float* chip, double image_height, double image_width,
                            double valid_lo, double valid_hi) {
  // Clipping only moves a side that crosses the chip onto the chip side, so a clipped side is strictly
  // inside exactly when the box side is strictly inside the chip's span.
  const float cx1 = fmaxf(box[0], chip[0]), cy1 = fmaxf(box[1], chip[1]);
  const float cx2 = fminf(box[2], chip[2]), cy2 = fminf(box[3], chip[3]);
  if (!(cx1 < cx2 && cy1 < cy2)) return false;  // outside the chip, or zero area
  const bool left = cx1 > chip[0] || static_cast<double>(chip[0]) <= 0.0;
  const bool top = cy1 > chip[1] || static_cast<double>(chip[1]) <= 0.0;
  const bool right = cx2 < chip[2] || static_cast<double>(chip[2]) >= image_width;
  const bool bottom = cy2 < chip[3] || static_cast<double>(chip[3]) >= image_height;
  if (!(left && top && right && bottom)) return false;
  // Size in double: the valid range is compared exactly as a float64 reference would.
  const double w = static_cast<double>(box[2]) - static_cast<double>(box[0]);
  const double h = static_cast<double>(box[3]) - static_cast<double>(box[1]);
  const double size = sqrt(w * h);
  return valid_lo <= size && size <= valid_hi;
}

// chips: (n, 4) when per_box_chip, else one (4,). image_hw: (n, 2) [height, width] of each box's image
// (a batch of several images), or null: image_height x image_width for all. keep: n bytes (0/1).
void stack_prune_cpu(const float* boxes, const float* chips, int64_t n, bool per_box_chip, const float* image_hw,
                     double image_height, double image_width, double valid_lo, double valid_hi, uint8_t* keep);

void stack_prune_cuda(const float* boxes, const float* chips, int64_t n, bool per_box_chip, const float* image_hw,
                      double image_height, double image_width, double valid_lo, double valid_hi, uint8_t* keep,
                      std::uintptr_t stream);

}  // namespace autofocus
