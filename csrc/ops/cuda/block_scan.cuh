// Block-wide exclusive scan of one int32 per thread, for the one-block-per-item kernels (focus_chips,
// soft_nms): warp shuffles, then each thread adds the totals of the warps before its own.
#pragma once
#include <cstdint>

namespace autofocus {
namespace detail {

// Every thread of the block calls it; *total gets the sum. warp_totals: 32 shared ints. Synchronisation:
// the first barrier publishes the warp totals, the second keeps a following call from overwriting them
// before every thread has read them.
__device__ __forceinline__ int32_t block_exclusive_scan(int32_t value, int32_t* warp_totals, int32_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int32_t inclusive = value;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int32_t up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  int32_t before = 0, sum = 0;
  for (int v = 0; v < warps; ++v) {
    const int32_t t = warp_totals[v];
    before += v < warp ? t : 0;
    sum += t;
  }
  __syncthreads();
  *total = sum;
  return before + inclusive - value;
}

}  // namespace detail
}  // namespace autofocus
