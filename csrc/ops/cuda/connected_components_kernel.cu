// CUDA connected components: label equivalence by union-find (Playne & Hawick 2018), the per-pixel
// bodies of connected_components.h one thread per pixel; roots (= each component's first pixel) are
// numbered in raster order by a CUB exclusive scan, all on the stream, no host round trip.
#include <cub/device/device_scan.cuh>

#include "cuda_utils.cuh"
#include "ops/connected_components.h"

namespace autofocus {

namespace detail {

constexpr int kCclThreads = 256;

__global__ void ccl_init_kernel(const uint8_t* mask, int32_t n, int32_t* labels) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) ccl_init_pixel(mask, labels, i);
}

__global__ void ccl_merge_kernel(const uint8_t* mask, int height, int width, int32_t* labels) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < height * width) ccl_merge_pixel(mask, labels, width, i / width, i % width);
}

__global__ void ccl_compress_kernel(int32_t n, int32_t* labels) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) ccl_compress_pixel(labels, i);
}

__global__ void ccl_root_flags_kernel(const int32_t* labels, int32_t n, int32_t* flags) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) flags[i] = ccl_is_root(labels, i) ? 1 : 0;
}

// ranks = exclusive scan of flags: the last entry plus the last flag is the component count.
__global__ void ccl_count_kernel(const int32_t* flags, const int32_t* ranks, int32_t n, int32_t* count) {
  *count = ranks[n - 1] + flags[n - 1];
}

__global__ void ccl_boxes_init_kernel(const int32_t* count, int32_t* boxes) {
  const int32_t r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r < *count) box_empty(boxes + 4 * r);
}

// Final label = rank of the root + 1, written over the root index (each thread owns its pixel).
__global__ void ccl_relabel_kernel(const int32_t* ranks, int height, int width, int32_t* labels, int32_t* boxes) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= height * width) return;
  const int32_t root = labels[i];
  if (root == kBackgroundLabel) {
    labels[i] = 0;
    return;
  }
  const int32_t rank = ranks[root];
  labels[i] = rank + 1;
  box_include(boxes + 4 * rank, i % width, i / width);
}

}  // namespace detail

void connected_components_cuda(const uint8_t* mask, int height, int width, int32_t* labels, int32_t* boxes,
                               int32_t* count, std::uintptr_t stream) {
  cudaStream_t s = as_stream(stream);
  const int32_t n = height * width;
  if (n == 0) {
    AF_CUDA_CHECK(cudaMemsetAsync(count, 0, sizeof(int32_t), s));
    return;
  }
  const int threads = detail::kCclThreads;
  const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  const int64_t max_rows = detail::max_components(height, width);
  const unsigned box_blocks = static_cast<unsigned>((max_rows + threads - 1) / threads);

  // One stream-ordered allocation: flags, ranks, then CUB's scan storage.
  size_t scan_bytes = 0;
  AF_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int32_t*>(nullptr),
                                              static_cast<int32_t*>(nullptr), n, s));
  char* scratch = nullptr;
  scratch_malloc_async(reinterpret_cast<void**>(&scratch), 2 * sizeof(int32_t) * n + scan_bytes, s);
  int32_t* flags = reinterpret_cast<int32_t*>(scratch);
  int32_t* ranks = flags + n;
  void* scan_storage = scratch + 2 * sizeof(int32_t) * n;

  cudaError_t err = cudaSuccess;
  auto step = [&](auto&& launch) {
    if (err != cudaSuccess) return;
    launch();
    err = cudaGetLastError();
  };
  step([&] { detail::ccl_init_kernel<<<blocks, threads, 0, s>>>(mask, n, labels); });
  step([&] { detail::ccl_merge_kernel<<<blocks, threads, 0, s>>>(mask, height, width, labels); });
  step([&] { detail::ccl_compress_kernel<<<blocks, threads, 0, s>>>(n, labels); });
  step([&] { detail::ccl_root_flags_kernel<<<blocks, threads, 0, s>>>(labels, n, flags); });
  if (err == cudaSuccess) err = cub::DeviceScan::ExclusiveSum(scan_storage, scan_bytes, flags, ranks, n, s);
  step([&] { detail::ccl_count_kernel<<<1, 1, 0, s>>>(flags, ranks, n, count); });
  step([&] { detail::ccl_boxes_init_kernel<<<box_blocks, threads, 0, s>>>(count, boxes); });
  step([&] { detail::ccl_relabel_kernel<<<blocks, threads, 0, s>>>(ranks, height, width, labels, boxes); });
  AF_CUDA_CHECK(cudaFreeAsync(scratch, s));
  AF_CUDA_CHECK(err);
}

}  // namespace autofocus
