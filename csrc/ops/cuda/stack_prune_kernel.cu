// stack_prune on the GPU: one thread per box, the shared stack_prune_keep rule.
#include "cuda_utils.cuh"
#include "ops/cuda/sort_keys.cuh"
#include "ops/stack_prune.h"

namespace autofocus {
namespace detail {

__global__ void stack_prune_kernel(const float* boxes, const float* chips, int64_t n, bool per_box_chip,
                                   const float* image_hw, double image_height, double image_width, double valid_lo,
                                   double valid_hi, uint8_t* keep) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float* chip = per_box_chip ? chips + 4 * i : chips;
  const double h = image_hw != nullptr ? image_hw[2 * i] : image_height;
  const double w = image_hw != nullptr ? image_hw[2 * i + 1] : image_width;
  keep[i] = stack_prune_keep(boxes + 4 * i, chip, h, w, valid_lo, valid_hi) ? 1 : 0;
}

}  // namespace detail

void stack_prune_cuda(const float* boxes, const float* chips, int64_t n, bool per_box_chip, const float* image_hw,
                      double image_height, double image_width, double valid_lo, double valid_hi, uint8_t* keep,
                      std::uintptr_t stream) {
  if (n == 0) return;
  detail::stack_prune_kernel<<<detail::blocks_for(n, 256), 256, 0, as_stream(stream)>>>(
      boxes, chips, n, per_box_chip, image_hw, image_height, image_width, valid_lo, valid_hi, keep);
  AF_CUDA_CHECK(cudaGetLastError());
}

}  // namespace autofocus
