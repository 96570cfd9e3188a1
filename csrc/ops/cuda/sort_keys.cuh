// CUDA helpers shared by the box kernels: float scores as unsigned keys whose ascending order is the
// (score desc) order, and a temporary buffer allocated on the stream.
#pragma once
#include <cstdint>

#include "cuda_utils.cuh"

namespace autofocus {
namespace detail {

// Ascending order of the result = descending order of score; -0 and +0 map to one key.
__device__ __forceinline__ uint32_t descending_key(float score) {
  const uint32_t bits = __float_as_uint(score + 0.f);
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~ordered;
}

// Stream-ordered temporary memory, freed (on the same stream) when it goes out of scope.
template <typename T>
class StreamBuffer {
 public:
  StreamBuffer(size_t count, cudaStream_t stream) : stream_(stream) {
    if (count > 0) scratch_malloc_async(reinterpret_cast<void**>(&ptr_), count * sizeof(T), stream);
  }
  ~StreamBuffer() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
};

// Writes the n indices ordered by (score desc, index asc) to order (device); in top_k_kernel.cu.
void order_by_score_cuda(const float* scores, int64_t n, int64_t* order, cudaStream_t stream);

inline int blocks_for(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

}  // namespace detail
}  // namespace autofocus
