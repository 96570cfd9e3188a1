// CUDA dilate: the per-pixel bodies of dilate.h, one thread per pixel, a horizontal then a vertical pass.
#include "cuda_utils.cuh"
#include "ops/dilate.h"

namespace autofocus {

namespace detail {

constexpr int kDilateThreads = 256;

__global__ void dilate_rows_kernel(const uint8_t* mask, int height, int width, int r, uint8_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(height) * width) return;
  const int y = static_cast<int>(i / width), x = static_cast<int>(i % width);
  out[i] = dilate_row_any(mask + static_cast<int64_t>(y) * width, width, x, r);
}

__global__ void dilate_cols_kernel(const uint8_t* mask, int height, int width, int r, uint8_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(height) * width) return;
  const int y = static_cast<int>(i / width), x = static_cast<int>(i % width);
  out[i] = dilate_col_any(mask, height, width, y, x, r);
}

}  // namespace detail

void dilate_cuda(const uint8_t* mask, int height, int width, int d, uint8_t* out, std::uintptr_t stream) {
  check_arg(d >= 1 && d % 2 == 1, "d: expected an odd size >= 1, got " + std::to_string(d));
  const int64_t n = static_cast<int64_t>(height) * width;
  if (n == 0) return;
  cudaStream_t s = as_stream(stream);
  uint8_t* rows = nullptr;
  scratch_malloc_async(reinterpret_cast<void**>(&rows), n, s);
  const unsigned blocks = static_cast<unsigned>((n + detail::kDilateThreads - 1) / detail::kDilateThreads);
  detail::dilate_rows_kernel<<<blocks, detail::kDilateThreads, 0, s>>>(mask, height, width, d / 2, rows);
  cudaError_t launch = cudaGetLastError();
  if (launch == cudaSuccess) {
    detail::dilate_cols_kernel<<<blocks, detail::kDilateThreads, 0, s>>>(rows, height, width, d / 2, out);
    launch = cudaGetLastError();
  }
  AF_CUDA_CHECK(cudaFreeAsync(rows, s));
  AF_CUDA_CHECK(launch);
}

}  // namespace autofocus
