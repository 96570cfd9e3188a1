// CUDA crop_resize: one thread per output pixel (all three channels), padding included, with the shared
// tap/bilinear bodies of crop_resize.h; float32 or float16 output.
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda_utils.cuh"
#include "ops/crop_resize.h"

namespace autofocus {

namespace detail {

__device__ __forceinline__ void store(float* out, int64_t i, float v) { out[i] = v; }
__device__ __forceinline__ void store(__half* out, int64_t i, float v) { out[i] = __float2half_rn(v); }

template <typename T>
__global__ void crop_resize_kernel(const uint8_t* image, int height, int width, const float* chips,
                                   const float* scales, const int32_t* out_sizes, int first_chip, int out_height,
                                   int out_width, CropNorm norm, T* out) {
  const int u = blockIdx.x * blockDim.x + threadIdx.x;
  const int v = blockIdx.y * blockDim.y + threadIdx.y;
  const int m = first_chip + static_cast<int>(blockIdx.z);
  if (u >= out_width || v >= out_height) return;
  const int64_t plane = static_cast<int64_t>(out_height) * out_width;
  const int64_t at = static_cast<int64_t>(m) * 3 * plane + static_cast<int64_t>(v) * out_width + u;
  if (v >= out_sizes[2 * m] || u >= out_sizes[2 * m + 1]) {
    for (int c = 0; c < 3; ++c) store(out, at + c * plane, 0.f);
    return;
  }
  const float* chip = chips + 4 * m;
  const float scale = scales[m];
  const CropTap ty = crop_tap(chip[1], v, scale, height);
  const CropTap tx = crop_tap(chip[0], u, scale, width);
  for (int c = 0; c < 3; ++c)
    store(out, at + c * plane,
          crop_bilinear(image, width, ty, tx, norm.source_channel[c]) * norm.gain[c] + norm.bias[c]);
}

// One thread per output pixel of chip m, whose image and sizes come with it (params row of 9 floats).
__global__ void crop_resize_images_kernel(const uint64_t* images, const float* params, int first_chip,
                                          int out_height, int out_width, CropNorm norm, float* out) {
  const int u = blockIdx.x * blockDim.x + threadIdx.x;
  const int v = blockIdx.y * blockDim.y + threadIdx.y;
  const int m = first_chip + static_cast<int>(blockIdx.z);
  if (u >= out_width || v >= out_height) return;
  const float* p = params + 9 * static_cast<int64_t>(m);
  const int64_t plane = static_cast<int64_t>(out_height) * out_width;
  const int64_t at = static_cast<int64_t>(m) * 3 * plane + static_cast<int64_t>(v) * out_width + u;
  if (v >= static_cast<int>(p[5]) || u >= static_cast<int>(p[6])) {
    for (int c = 0; c < 3; ++c) out[at + c * plane] = 0.f;
    return;
  }
  const uint8_t* image = reinterpret_cast<const uint8_t*>(images[m]);
  const int height = static_cast<int>(p[7]), width = static_cast<int>(p[8]);
  const CropTap ty = crop_tap(p[1], v, p[4], height);
  const CropTap tx = crop_tap(p[0], u, p[4], width);
  for (int c = 0; c < 3; ++c)
    out[at + c * plane] = crop_bilinear(image, width, ty, tx, norm.source_channel[c]) * norm.gain[c] + norm.bias[c];
}

template <typename T>
cudaError_t launch_crop_resize(const uint8_t* image, int height, int width, const float* chips, const float* scales,
                               const int32_t* out_sizes, int count, int out_height, int out_width,
                               const CropNorm& norm, T* out, cudaStream_t s) {
  const dim3 threads(32, 8);
  constexpr int kMaxGridZ = 65535;
  for (int first = 0; first < count; first += kMaxGridZ) {
    const dim3 blocks((out_width + threads.x - 1) / threads.x, (out_height + threads.y - 1) / threads.y,
                      std::min(kMaxGridZ, count - first));
    crop_resize_kernel<T><<<blocks, threads, 0, s>>>(image, height, width, chips, scales, out_sizes, first,
                                                     out_height, out_width, norm, out);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace detail

void crop_resize_cuda(const uint8_t* image, int height, int width, const float* chips, const float* scales,
                      const int32_t* out_sizes, int count, int out_height, int out_width,
                      const detail::CropNorm& norm, bool half, void* out, std::uintptr_t stream) {
  if (count == 0 || out_height == 0 || out_width == 0) return;
  cudaStream_t s = as_stream(stream);
  if (half)
    AF_CUDA_CHECK(detail::launch_crop_resize(image, height, width, chips, scales, out_sizes, count, out_height,
                                             out_width, norm, static_cast<__half*>(out), s));
  else
    AF_CUDA_CHECK(detail::launch_crop_resize(image, height, width, chips, scales, out_sizes, count, out_height,
                                             out_width, norm, static_cast<float*>(out), s));
}

void crop_resize_images_cuda(const uint64_t* images, const float* params, int count, int out_height, int out_width,
                             const detail::CropNorm& norm, float* out, std::uintptr_t stream) {
  if (count == 0 || out_height == 0 || out_width == 0) return;
  cudaStream_t s = as_stream(stream);
  const dim3 threads(32, 8);
  constexpr int kMaxGridZ = 65535;
  for (int first = 0; first < count; first += kMaxGridZ) {
    const dim3 blocks((out_width + threads.x - 1) / threads.x, (out_height + threads.y - 1) / threads.y,
                      std::min(kMaxGridZ, count - first));
    detail::crop_resize_images_kernel<<<blocks, threads, 0, s>>>(images, params, first, out_height, out_width, norm,
                                                                 out);
    AF_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace autofocus
