// paint_boxes on the GPU: one thread per box, the shared paint_box body. Threads whose boxes overlap write
// the same value (1) to the same cells, so the order of their writes does not matter.
#include "cuda_utils.cuh"
#include "ops/cuda/sort_keys.cuh"
#include "ops/paint_boxes.h"

namespace autofocus {
namespace detail {

__global__ void paint_boxes_kernel(float* out, int64_t maps, int64_t height, int64_t width, const float* boxes,
                                   const int64_t* index, const uint8_t* keep, int64_t n, double stride) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= n) return;
  if (keep != nullptr && !keep[k]) return;
  paint_box(boxes + 4 * k, index[k], maps, height, width, stride, out);
}

}  // namespace detail

void paint_boxes_cuda(float* out, int64_t maps, int64_t height, int64_t width, const float* boxes,
                      const int64_t* index, const uint8_t* keep, int64_t n, double stride, std::uintptr_t stream) {
  if (n == 0 || maps == 0 || height == 0 || width == 0) return;
  detail::paint_boxes_kernel<<<detail::blocks_for(n, 128), 128, 0, as_stream(stream)>>>(
      out, maps, height, width, boxes, index, keep, n, stride);
  AF_CUDA_CHECK(cudaGetLastError());
}

}  // namespace autofocus
