// dilate: binary dilation of an (H, W) uint8 mask with a d x d square (d odd); pixels outside the map
// are background. Separable: a horizontal pass then a vertical pass, each an OR over the clipped window of
// d neighbours (per pixel on the GPU; whole rows at a time on the CPU, which vectorises).
#pragma once
#include <cstdint>

#include "common.h"

namespace autofocus {

namespace detail {

// The clipped window [lo, hi] of a d x d square (r = d / 2) about `center` on an axis of `size` cells:
// the border rule (outside the map is background) lives here, for the CPU and the GPU.
AF_HD void dilate_window(int center, int r, int size, int* lo, int* hi) {
  *lo = center - r < 0 ? 0 : center - r;
  *hi = center + r >= size ? size - 1 : center + r;
}

// GPU, per pixel: 1 when any of row[window(x)] is nonzero.
AF_HD uint8_t dilate_row_any(const uint8_t* row, int width, int x, int r) {
  int lo, hi;
  dilate_window(x, r, width, &lo, &hi);
  uint8_t any = 0;
  for (int i = lo; i <= hi; ++i) any |= row[i];
  return any != 0;
}

// GPU, per pixel: 1 when any of column x over rows window(y) is nonzero; rows are `width` apart.
AF_HD uint8_t dilate_col_any(const uint8_t* map, int height, int width, int y, int x, int r) {
  int lo, hi;
  dilate_window(y, r, height, &lo, &hi);
  uint8_t any = 0;
  for (int i = lo; i <= hi; ++i) any |= map[static_cast<int64_t>(i) * width + x];
  return any != 0;
}

}  // namespace detail

// mask, out: (height, width) uint8, C-contiguous; out is 0/1. d odd >= 1 (checked by runtime/ops/).
void dilate_cpu(const uint8_t* mask, int height, int width, int d, uint8_t* out);

// Device pointers; `stream` is a cudaStream_t. Uses one (height, width) temporary (stream-ordered).
void dilate_cuda(const uint8_t* mask, int height, int width, int d, uint8_t* out, std::uintptr_t stream);

}  // namespace autofocus
