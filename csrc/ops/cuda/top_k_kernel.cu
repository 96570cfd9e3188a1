// top_k on the GPU: a stable radix sort of (descending-score key, index) pairs; the first k indices.
#include <cub/device/device_radix_sort.cuh>

#include "cuda_utils.cuh"
#include "ops/cuda/sort_keys.cuh"
#include "ops/top_k.h"

namespace autofocus {
namespace detail {

__global__ void score_keys_kernel(const float* scores, int64_t n, uint32_t* keys, int64_t* index) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  keys[i] = descending_key(scores[i]);
  index[i] = i;
}

// Writes the n indices ordered by (score desc, index asc) to order (device).
void order_by_score_cuda(const float* scores, int64_t n, int64_t* order, cudaStream_t stream) {
  StreamBuffer<uint32_t> keys_in(n, stream), keys_out(n, stream);
  StreamBuffer<int64_t> index_in(n, stream);
  score_keys_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(scores, n, keys_in.get(), index_in.get());
  AF_CUDA_CHECK(cudaGetLastError());
  size_t temp_bytes = 0;
  AF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in.get(), keys_out.get(),
                                                index_in.get(), order, n, 0, 32, stream));
  StreamBuffer<char> temp(temp_bytes, stream);
  // Radix sort is stable: equal keys keep ascending index order.
  AF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, keys_in.get(), keys_out.get(),
                                                index_in.get(), order, n, 0, 32, stream));
}

}  // namespace detail

void top_k_cuda(const float* scores, int64_t n, int64_t k, int64_t* out, std::uintptr_t stream) {
  const int64_t m = k < n ? k : n;
  if (m == 0) return;
  cudaStream_t s = as_stream(stream);
  detail::StreamBuffer<int64_t> order(n, s);
  detail::order_by_score_cuda(scores, n, order.get(), s);
  AF_CUDA_CHECK(cudaMemcpyAsync(out, order.get(), m * sizeof(int64_t), cudaMemcpyDeviceToDevice, s));
}

}  // namespace autofocus
