// CPU dilate: the per-pixel bodies of dilate.h, run over the map in two passes.
#include <vector>

#include "ops/dilate.h"

namespace autofocus {

namespace detail {

void dilate_rows(const uint8_t* mask, int height, int width, int r, uint8_t* out) {
  for (int y = 0; y < height; ++y) {
    const uint8_t* row = mask + static_cast<int64_t>(y) * width;
    uint8_t* out_row = out + static_cast<int64_t>(y) * width;
    for (int x = 0; x < width; ++x) out_row[x] = dilate_row_any(row, width, x, r);
  }
}

void dilate_cols(const uint8_t* mask, int height, int width, int r, uint8_t* out) {
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      out[static_cast<int64_t>(y) * width + x] = dilate_col_any(mask, height, width, y, x, r);
}

}  // namespace detail

void dilate_cpu(const uint8_t* mask, int height, int width, int d, uint8_t* out) {
  check_arg(d >= 1 && d % 2 == 1, "d: expected an odd size >= 1, got " + std::to_string(d));
  std::vector<uint8_t> rows(static_cast<size_t>(height) * width);
  detail::dilate_rows(mask, height, width, d / 2, rows.data());
  detail::dilate_cols(rows.data(), height, width, d / 2, out);
}

}  // namespace autofocus
