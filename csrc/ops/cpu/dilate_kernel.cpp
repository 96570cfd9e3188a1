// CPU dilate: the windows of dilate.h applied a whole row at a time, so the ORs vectorise: along x as
// shifted ORs of a row (shift s covers offsets +-s inside the row), along y as ORs of whole rows.
#include <algorithm>
#include <vector>

#include "ops/dilate.h"

namespace autofocus {

namespace detail {

// out[x] = 1 when any of row[window(x)] is nonzero (window(x) = [x - r, x + r] clipped to the row).
void dilate_row(const uint8_t* row, int width, int r, uint8_t* out) {
  for (int x = 0; x < width; ++x) out[x] = row[x] != 0;
  for (int s = 1; s <= r && s < width; ++s) {
    for (int x = 0; x + s < width; ++x) out[x] |= row[x + s] != 0;
    for (int x = s; x < width; ++x) out[x] |= row[x - s] != 0;
  }
}

}  // namespace detail

void dilate_cpu(const uint8_t* mask, int height, int width, int d, uint8_t* out) {
  check_arg(d >= 1 && d % 2 == 1, "d: expected an odd size >= 1, got " + std::to_string(d));
  const int r = d / 2;
  std::vector<uint8_t> rows(static_cast<size_t>(height) * width);
  for (int y = 0; y < height; ++y)
    detail::dilate_row(mask + static_cast<int64_t>(y) * width, width, r, rows.data() + static_cast<int64_t>(y) * width);
  for (int y = 0; y < height; ++y) {
    int lo, hi;
    detail::dilate_window(y, r, height, &lo, &hi);
    uint8_t* out_row = out + static_cast<int64_t>(y) * width;
    std::copy_n(rows.data() + static_cast<int64_t>(lo) * width, width, out_row);
    for (int i = lo + 1; i <= hi; ++i) {
      const uint8_t* row = rows.data() + static_cast<int64_t>(i) * width;
      for (int x = 0; x < width; ++x) out_row[x] |= row[x];
    }
  }
}

}  // namespace autofocus
