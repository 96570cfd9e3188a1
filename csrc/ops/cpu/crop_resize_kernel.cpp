// CPU crop_resize: the shared tap/bilinear bodies of crop_resize.h, with the horizontal taps of a chip
// computed once and reused by every output row.
#include <algorithm>
#include <vector>

#include "ops/crop_resize.h"

namespace autofocus {

namespace detail {

void crop_resize_one(const uint8_t* image, int height, int width, const float* chip, float scale, int oh, int ow,
                     int out_height, int out_width, const CropNorm& norm, float* out) {
  const int64_t plane = static_cast<int64_t>(out_height) * out_width;
  std::vector<CropTap> taps_x(ow);
  for (int u = 0; u < ow; ++u) taps_x[u] = crop_tap(chip[0], u, scale, width);
  for (int v = 0; v < out_height; ++v) {
    float* rows[3];
    for (int c = 0; c < 3; ++c) rows[c] = out + c * plane + static_cast<int64_t>(v) * out_width;
    if (v >= oh) {
      for (int c = 0; c < 3; ++c) std::fill(rows[c], rows[c] + out_width, 0.f);
      continue;
    }
    const CropTap ty = crop_tap(chip[1], v, scale, height);
    for (int c = 0; c < 3; ++c) {
      const int source = norm.source_channel[c];
      const float gain = norm.gain[c], bias = norm.bias[c];
      float* row = rows[c];
      for (int u = 0; u < ow; ++u) row[u] = crop_bilinear(image, width, ty, taps_x[u], source) * gain + bias;
      std::fill(row + ow, row + out_width, 0.f);
    }
  }
}

}  // namespace detail

void crop_resize_cpu(const uint8_t* image, int height, int width, const float* chips, const float* scales,
                     const int32_t* out_sizes, int count, int out_height, int out_width,
                     const detail::CropNorm& norm, float* out) {
  const int64_t slot = 3LL * out_height * out_width;
  for (int m = 0; m < count; ++m)
    detail::crop_resize_one(image, height, width, chips + 4 * m, scales[m], out_sizes[2 * m], out_sizes[2 * m + 1],
                            out_height, out_width, norm, out + m * slot);
}

}  // namespace autofocus
