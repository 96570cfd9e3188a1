// focus_chips: Algorithm 1 of docs/design.md (FocusChip generator) on a stride-16 focus map, in map cells.
//   1. binary = prob >= threshold; 2. dilate d x d; 3. 8-connected components, one enclosing rectangle
//   each; 4. grow each rectangle about its centre to at least k x k, shifted inward at the map border;
//   5. paint the rectangles into a fresh mask and repeat 3-4 until the number of rectangles stops changing.
// The final rectangles come from labelling painted rectangles that no longer touch, so each component is
// one rectangle whose first pixel is its top-left corner: raster numbering = order by (y1, x1).
#pragma once
#include <cstdint>

#include "common.h"

namespace autofocus {

namespace detail {

// NaN and +-inf fail (no fast-math in this build, so the comparisons are exact).
AF_HD bool focus_is_finite(float p) { return p == p && p <= 3.402823466e38f && p >= -3.402823466e38f; }

// Grows [lo, hi) to at least k cells about its centre (the odd extra cell goes to the high side), shifts it
// inside [0, size), and clips it only when size < k.
AF_HD void focus_grow_span(int32_t* lo, int32_t* hi, int k, int size) {
  int32_t a = *lo, b = *hi;
  const int32_t length = b - a;
  if (length < k) {
    a -= (k - length) / 2;
    b = a + k;
  }
  if (a < 0) {
    b -= a;
    a = 0;
  }
  if (b > size) {
    a -= b - size;
    b = size;
  }
  if (a < 0) a = 0;  // only when the map is smaller than k
  *lo = a;
  *hi = b;
}

// rect = [x1, y1, x2, y2) in cells of a height x width map.
AF_HD void focus_grow_rect(int32_t* rect, int k, int height, int width) {
  focus_grow_span(&rect[0], &rect[2], k, width);
  focus_grow_span(&rect[1], &rect[3], k, height);
}

// Cell j (0 <= j < area) of rect, as a linear index into a map `width` cells wide.
AF_HD int32_t focus_rect_cell(const int32_t* rect, int32_t j, int width) {
  const int32_t rect_width = rect[2] - rect[0];
  return (rect[1] + j / rect_width) * width + rect[0] + j % rect_width;
}

AF_HD int32_t focus_rect_area(const int32_t* rect) { return (rect[2] - rect[0]) * (rect[3] - rect[1]); }

}  // namespace detail

// One map: prob rows are `pitch` floats apart, the map is height x width. Writes up to
// max_components(height, width) rows of [x1, y1, x2, y2) to chips, in (y1, x1) order, and returns how many;
// -1 when prob holds NaN or inf.
int32_t focus_chips_cpu(const float* prob, int height, int width, int pitch, float threshold, int dilation,
                        int min_size, int32_t* chips);

// A batch of maps, device pointers, one launch over the batch (one thread block per map) plus one that
// gathers the chips in batch order. probs (batch, height, width); valid_hw (batch, 2): each map's valid
// region (top-left), the rest is ignored. chips (batch * max_components(height, width), 4) and
// batch_index (same rows) receive the chips of all maps in batch order; status (2 int32): total count,
// and 1 when a valid region holds NaN or inf (then the count is 0).
void focus_chips_batched_cuda(const float* probs, const int32_t* valid_hw, int batch, int height, int width,
                              float threshold, int dilation, int min_size, int32_t* chips,
                              int32_t* batch_index, int32_t* status, std::uintptr_t stream);

}  // namespace autofocus
