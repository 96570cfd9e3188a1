// dilate: binary dilation of an (H, W) uint8 mask with a d x d square (d odd); pixels outside the map
// are background. Separable: a horizontal pass then a vertical pass, each an OR over d neighbours.
#pragma once
#include <cstdint>

#include "common.h"

namespace autofocus {

namespace detail {

// 1 when any of row[x - r .. x + r] (clipped to the row) is nonzero.
AF_HD uint8_t dilate_row_any(const uint8_t* row, int width, int x, int r) {
  const int lo = x - r < 0 ? 0 : x - r;
  const int hi = x + r >= width ? width - 1 : x + r;
  uint8_t any = 0;
  for (int i = lo; i <= hi; ++i) any |= row[i];
  return any != 0;
}

// 1 when any of column x at rows y - r .. y + r (clipped to the map) is nonzero; rows are `width` apart.
AF_HD uint8_t dilate_col_any(const uint8_t* map, int height, int width, int y, int x, int r) {
  const int lo = y - r < 0 ? 0 : y - r;
  const int hi = y + r >= height ? height - 1 : y + r;
  uint8_t any = 0;
  for (int i = lo; i <= hi; ++i) any |= map[static_cast<int64_t>(i) * width + x];
  return any != 0;
}

}  // namespace detail

// mask, out: (height, width) uint8, C-contiguous; out is 0/1. d odd >= 1 (checked by runtime/ops.py).
void dilate_cpu(const uint8_t* mask, int height, int width, int d, uint8_t* out);

// Device pointers; `stream` is a cudaStream_t. Uses one (height, width) temporary (stream-ordered).
void dilate_cuda(const uint8_t* mask, int height, int width, int d, uint8_t* out, std::uintptr_t stream);

}  // namespace autofocus
