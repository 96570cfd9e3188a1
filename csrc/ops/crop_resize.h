// crop_resize: cuts chips out of an (H, W, 3) uint8 image, resizes each by its scale (bilinear, exact
// affine: output pixel u samples src_x = x1 + (u + 0.5) / s - 0.5, clamped to the image = replicated
// edge), normalises ((pixel / 255 - mean) / std, as pixel * gain + bias) and places it at the top-left of
// a zero (normalised space) (3, Hb, Wb) slot, channels optionally swapped BGR -> RGB.
#pragma once
#include <cstdint>

#include "common.h"

namespace autofocus {

namespace detail {

// The two source pixels and the weight of the second one for output index `index` along one axis.
struct CropTap {
  int32_t i0, i1;
  float frac;
};

AF_HD CropTap crop_tap(float start, int index, float scale, int size) {
  float src = start + (static_cast<float>(index) + 0.5f) / scale - 0.5f;
  const float last = static_cast<float>(size - 1);
  src = src < 0.f ? 0.f : (src > last ? last : src);
  const int32_t i0 = static_cast<int32_t>(src);  // src >= 0: truncation is floor
  const int32_t i1 = i0 + 1 < size ? i0 + 1 : size - 1;
  return CropTap{i0, i1, src - static_cast<float>(i0)};
}

AF_HD float crop_lerp(float a, float b, float frac) { return a + frac * (b - a); }

// Bilinear value of channel c (0..2) at taps (ty, tx) of an interleaved width x 3 uint8 image: along x
// on both rows, then along y (the CPU kernel does the same two steps row by row).
AF_HD float crop_bilinear(const uint8_t* image, int width, CropTap ty, CropTap tx, int c) {
  const int64_t row0 = static_cast<int64_t>(ty.i0) * width * 3;
  const int64_t row1 = static_cast<int64_t>(ty.i1) * width * 3;
  const float top = crop_lerp(image[row0 + tx.i0 * 3 + c], image[row0 + tx.i1 * 3 + c], tx.frac);
  const float bottom = crop_lerp(image[row1 + tx.i0 * 3 + c], image[row1 + tx.i1 * 3 + c], tx.frac);
  return crop_lerp(top, bottom, ty.frac);
}

// Normalisation folded into one multiply-add per channel: (p / 255 - mean) / std = p * gain + bias.
struct CropNorm {
  float gain[3];
  float bias[3];
  int32_t source_channel[3];  // output channel c reads input channel source_channel[c]
};

}  // namespace detail

// image (height, width, 3) uint8; chips (count, 4) float32 [x1, y1, x2, y2) in image pixels; scales (count,);
// out_sizes (count, 2) int32 (oh, ow) of each resized chip, <= (out_height, out_width);
// out (count, 3, out_height, out_width) float32, every element written.
void crop_resize_cpu(const uint8_t* image, int height, int width, const float* chips, const float* scales,
                     const int32_t* out_sizes, int count, int out_height, int out_width,
                     const detail::CropNorm& norm, float* out);

// Device pointers; out is float32 or, when `half`, float16.
void crop_resize_cuda(const uint8_t* image, int height, int width, const float* chips, const float* scales,
                      const int32_t* out_sizes, int count, int out_height, int out_width,
                      const detail::CropNorm& norm, bool half, void* out, std::uintptr_t stream);

// Chips of several images in one launch: images (count,) device addresses of each chip's (H, W, 3) uint8
// image; params (count, 9) float32 [x1, y1, x2, y2, scale, oh, ow, H, W]; out float32 as above.
void crop_resize_images_cuda(const uint64_t* images, const float* params, int count, int out_height, int out_width,
                             const detail::CropNorm& norm, float* out, std::uintptr_t stream);

}  // namespace autofocus
