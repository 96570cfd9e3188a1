// CUDA Algorithm 1 over a batch of focus maps: one thread block per map runs every step of
// focus_chips_cpu (threshold, dilate, union-find components, boxes, grow, paint, repeat) with the shared
// bodies of dilate.h / connected_components.h / focus_chips.h, block-synchronised between steps; a second
// launch gathers the chips of all maps in batch order. Scratch lives in one stream-ordered allocation.
#include "cuda_utils.cuh"
#include "ops/connected_components.h"
#include "ops/dilate.h"
#include "ops/focus_chips.h"

namespace autofocus {

namespace detail {

constexpr int kFocusThreads = 256;  // a multiple of 32: the root numbering scans warp by warp

// Per-map scratch, each array sized for the padded map (height x width) or max_components rows.
struct FocusScratch {
  int32_t* labels;
  int32_t* ranks;
  int32_t* rects;     // the chips end here
  int32_t* previous;  // the rectangles of the round before
  int32_t* counts;    // (batch,) chips per map
  int32_t* bad;       // (batch,) 1 when the map's valid region holds NaN or inf
  uint8_t* mask;
  uint8_t* paint;
};

// Steps 3-4 for the whole block: grown enclosing rectangles of mask's 8-connected components, in raster
// order of the components' first pixels (the order connected_components_cpu numbers them). Every thread
// calls it and gets the count.
__device__ int32_t block_grown_component_rects(const uint8_t* mask, int height, int width, int min_size,
                                               int32_t* labels, int32_t* ranks, int32_t* rects) {
  __shared__ int32_t warp_roots[kFocusThreads / 32];
  __shared__ int32_t roots_before;
  const int32_t n = height * width;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int32_t i = tid; i < n; i += kFocusThreads) ccl_init_pixel(mask, labels, i);
  if (tid == 0) roots_before = 0;
  __syncthreads();
  for (int32_t i = tid; i < n; i += kFocusThreads) ccl_merge_pixel(mask, labels, width, i / width, i % width);
  __syncthreads();
  for (int32_t i = tid; i < n; i += kFocusThreads) ccl_compress_pixel(labels, i);
  __syncthreads();
  // Number the roots in raster order, kFocusThreads pixels at a time (a ballot per warp, then warps in order).
  for (int32_t base = 0; base < n; base += kFocusThreads) {
    const int32_t i = base + tid;
    const bool root = i < n && ccl_is_root(labels, i);
    const unsigned ballot = __ballot_sync(0xffffffffu, root);
    if (lane == 0) warp_roots[warp] = __popc(ballot);
    __syncthreads();
    if (root) {
      int32_t rank = roots_before + __popc(ballot & ((1u << lane) - 1u));
      for (int v = 0; v < warp; ++v) rank += warp_roots[v];
      ranks[i] = rank;
    }
    __syncthreads();
    if (tid == 0)
      for (int v = 0; v < kFocusThreads / 32; ++v) roots_before += warp_roots[v];
    __syncthreads();
  }
  const int32_t count = roots_before;
  for (int32_t r = tid; r < count; r += kFocusThreads) box_empty(rects + 4 * r);
  __syncthreads();
  for (int32_t i = tid; i < n; i += kFocusThreads) {
    const int32_t root = labels[i];
    if (root != kBackgroundLabel) box_include(rects + 4 * ranks[root], i % width, i / width);
  }
  __syncthreads();
  for (int32_t r = tid; r < count; r += kFocusThreads) focus_grow_rect(rects + 4 * r, min_size, height, width);
  __syncthreads();
  return count;
}

__global__ void __launch_bounds__(kFocusThreads)
    focus_chips_block_kernel(const float* probs, const int32_t* valid_hw, int height, int width, float threshold,
                             int dilation, int min_size, int64_t max_rects, FocusScratch scratch) {
  __shared__ int any_on, any_bad;
  const int b = blockIdx.x, tid = threadIdx.x;
  const int64_t map_size = static_cast<int64_t>(height) * width;
  const float* prob = probs + b * map_size;
  int32_t* labels = scratch.labels + b * map_size;
  int32_t* ranks = scratch.ranks + b * map_size;
  uint8_t* mask = scratch.mask + b * map_size;
  uint8_t* paint = scratch.paint + b * map_size;
  int32_t* rects = scratch.rects + b * max_rects * 4;
  int32_t* previous = scratch.previous + b * max_rects * 4;
  // The valid region, clamped to the padded map (runtime/ops.py has checked it already).
  const int h = min(max(valid_hw[2 * b], 0), height), w = min(max(valid_hw[2 * b + 1], 0), width);
  const int32_t n = h * w;

  // 1. threshold (into `paint`, free until step 5), noting NaN/inf and whether any cell is on.
  if (tid == 0) any_on = any_bad = 0;
  __syncthreads();
  for (int32_t i = tid; i < n; i += kFocusThreads) {
    const float p = prob[static_cast<int64_t>(i / w) * width + i % w];
    if (!focus_is_finite(p)) any_bad = 1;
    paint[i] = p >= threshold;
    if (p >= threshold) any_on = 1;
  }
  __syncthreads();
  if (any_bad || !any_on) {
    if (tid == 0) {
      scratch.counts[b] = 0;
      scratch.bad[b] = any_bad;
    }
    return;
  }
  // 2. dilate: rows paint -> mask, columns mask -> paint.
  const int r = dilation / 2;
  for (int32_t i = tid; i < n; i += kFocusThreads) mask[i] = dilate_row_any(paint + (i / w) * w, w, i % w, r);
  __syncthreads();
  for (int32_t i = tid; i < n; i += kFocusThreads) paint[i] = dilate_col_any(mask, h, w, i / w, i % w, r);
  __syncthreads();
  // 3-4, then 5 until the count holds (each round but the last merges at least two rectangles).
  int32_t count = block_grown_component_rects(paint, h, w, min_size, labels, ranks, rects);
  while (true) {
    int32_t* swap = rects;
    rects = previous;
    previous = swap;
    for (int32_t i = tid; i < n; i += kFocusThreads) mask[i] = 0;
    __syncthreads();
    for (int32_t q = 0; q < count; ++q) {
      const int32_t* rect = previous + 4 * q;
      for (int32_t j = tid, area = focus_rect_area(rect); j < area; j += kFocusThreads)
        mask[focus_rect_cell(rect, j, w)] = 1;
    }
    __syncthreads();
    const int32_t merged = block_grown_component_rects(mask, h, w, min_size, labels, ranks, rects);
    if (merged == count) break;
    count = merged;
  }
  // The gather reads scratch.rects: copy there when the last round wrote the other buffer.
  int32_t* chips = scratch.rects + b * max_rects * 4;
  if (rects != chips)
    for (int32_t j = tid; j < 4 * count; j += kFocusThreads) chips[j] = rects[j];
  if (tid == 0) {
    scratch.counts[b] = count;
    scratch.bad[b] = 0;
  }
}

// Block b copies map b's chips after those of maps 0..b-1; the last block writes the status.
__global__ void focus_chips_gather_kernel(const int32_t* counts, const int32_t* bad, const int32_t* rects,
                                          int64_t max_rects, int batch, int32_t* chips, int32_t* batch_index,
                                          int32_t* status) {
  __shared__ int32_t offset, any_bad;
  const int b = blockIdx.x, tid = threadIdx.x;
  if (tid == 0) {
    offset = 0;
    any_bad = 0;
    for (int v = 0; v < batch; ++v) {
      if (v < b) offset += counts[v];
      any_bad |= bad[v];
    }
  }
  __syncthreads();
  if (any_bad) {
    if (b == batch - 1 && tid == 0) {
      status[0] = 0;
      status[1] = 1;
    }
    return;
  }
  const int32_t count = counts[b];
  const int32_t* source = rects + b * max_rects * 4;
  for (int32_t j = tid; j < 4 * count; j += blockDim.x) chips[4 * static_cast<int64_t>(offset) + j] = source[j];
  for (int32_t j = tid; j < count; j += blockDim.x) batch_index[offset + j] = b;
  if (b == batch - 1 && tid == 0) {
    status[0] = offset + count;
    status[1] = 0;
  }
}

}  // namespace detail

void focus_chips_batched_cuda(const float* probs, const int32_t* valid_hw, int batch, int height, int width,
                              float threshold, int dilation, int min_size, int32_t* chips,
                              int32_t* batch_index, int32_t* status, std::uintptr_t stream) {
  check_arg(dilation >= 1 && dilation % 2 == 1, "dilation: expected an odd size >= 1");
  check_arg(min_size >= 1, "min_size: expected >= 1");
  cudaStream_t s = as_stream(stream);
  if (batch == 0) {
    AF_CUDA_CHECK(cudaMemsetAsync(status, 0, 2 * sizeof(int32_t), s));
    return;
  }
  const int64_t map_size = static_cast<int64_t>(height) * width;
  const int64_t max_rects = detail::max_components(height, width);
  // int32 arrays first (labels, ranks, rects, previous, counts, bad), then the uint8 masks.
  const int64_t ints = batch * (2 * map_size + 8 * max_rects + 2);
  char* block = nullptr;
  scratch_malloc_async(reinterpret_cast<void**>(&block), ints * sizeof(int32_t) + 2 * batch * map_size, s);
  detail::FocusScratch scratch;
  scratch.labels = reinterpret_cast<int32_t*>(block);
  scratch.ranks = scratch.labels + batch * map_size;
  scratch.rects = scratch.ranks + batch * map_size;
  scratch.previous = scratch.rects + batch * max_rects * 4;
  scratch.counts = scratch.previous + batch * max_rects * 4;
  scratch.bad = scratch.counts + batch;
  scratch.mask = reinterpret_cast<uint8_t*>(scratch.bad + batch);
  scratch.paint = scratch.mask + batch * map_size;

  detail::focus_chips_block_kernel<<<batch, detail::kFocusThreads, 0, s>>>(
      probs, valid_hw, height, width, threshold, dilation, min_size, max_rects, scratch);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) {
    detail::focus_chips_gather_kernel<<<batch, detail::kFocusThreads, 0, s>>>(
        scratch.counts, scratch.bad, scratch.rects, max_rects, batch, chips, batch_index, status);
    err = cudaGetLastError();
  }
  AF_CUDA_CHECK(cudaFreeAsync(block, s));
  AF_CUDA_CHECK(err);
}

}  // namespace autofocus
