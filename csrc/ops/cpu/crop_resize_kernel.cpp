// CPU crop_resize: the bilinear of crop_resize.h split in its two steps so they vectorise: each source
// row a chip needs is interpolated along x once (into planar float rows, cached while consecutive output
// rows share it), then every output row is one contiguous lerp along y plus the normalisation.
#include <algorithm>
#include <vector>

#include "ops/crop_resize.h"

namespace autofocus {

namespace detail {

namespace {

// Along-x interpolation of source rows for one chip, two rows cached (an output row needs rows i0, i1).
class RowCache {
 public:
  RowCache(const uint8_t* image, int width, const std::vector<CropTap>& taps_x)
      : image_(image), width_(width), taps_x_(taps_x), ow_(static_cast<int>(taps_x.size())) {
    for (auto& slot : slots_) slot.values.resize(3 * static_cast<size_t>(ow_));
  }

  // Planar (3, ow) values of source row `row`, keeping the slot that holds row `keep`.
  const float* get(int row, int keep) {
    for (auto& slot : slots_)
      if (slot.row == row) return slot.values.data();
    Slot& slot = slots_[0].row == keep ? slots_[1] : slots_[0];
    slot.row = row;
    const uint8_t* pixels = image_ + static_cast<int64_t>(row) * width_ * 3;
    float* out = slot.values.data();
    for (int u = 0; u < ow_; ++u) {
      const CropTap& t = taps_x_[u];
      const uint8_t* a = pixels + t.i0 * 3;
      const uint8_t* b = pixels + t.i1 * 3;
      for (int c = 0; c < 3; ++c) out[c * ow_ + u] = crop_lerp(a[c], b[c], t.frac);
    }
    return out;
  }

 private:
  struct Slot {
    int row = -1;
    std::vector<float> values;
  };
  const uint8_t* image_;
  int width_;
  const std::vector<CropTap>& taps_x_;
  int ow_;
  Slot slots_[2];
};

}  // namespace

void crop_resize_one(const uint8_t* image, int height, int width, const float* chip, float scale, int oh, int ow,
                     int out_height, int out_width, const CropNorm& norm, float* out) {
  const int64_t plane = static_cast<int64_t>(out_height) * out_width;
  std::vector<CropTap> taps_x(ow);
  for (int u = 0; u < ow; ++u) taps_x[u] = crop_tap(chip[0], u, scale, width);
  RowCache rows(image, width, taps_x);
  for (int v = 0; v < out_height; ++v) {
    if (v >= oh) {
      for (int c = 0; c < 3; ++c) std::fill_n(out + c * plane + static_cast<int64_t>(v) * out_width, out_width, 0.f);
      continue;
    }
    const CropTap ty = crop_tap(chip[1], v, scale, height);
    const float* top = rows.get(ty.i0, ty.i1);
    const float* bottom = rows.get(ty.i1, ty.i0);
    for (int c = 0; c < 3; ++c) {
      const int source = norm.source_channel[c];
      const float* t = top + source * ow;
      const float* b = bottom + source * ow;
      const float gain = norm.gain[c], bias = norm.bias[c], frac = ty.frac;
      float* row = out + c * plane + static_cast<int64_t>(v) * out_width;
      for (int u = 0; u < ow; ++u) row[u] = crop_lerp(t[u], b[u], frac) * gain + bias;
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
