// CUDA Algorithm 1 over a batch of focus maps, one thread block per map, then one launch that gathers the
// chips of all maps in batch order. Two block kernels:
//  - focus_chips_shared_kernel (the default): focus_chips_block.h's steps with the whole map in shared
//    memory, 1024 threads, rectangles merged as rectangles (no repainting); used when the map's arrays fit
//    the device's shared memory per block (88 x 125 cells: 110 KB);
//  - focus_chips_block_kernel (larger maps): every step of focus_chips_cpu (threshold, dilate, union-find
//    components, boxes, grow, paint, repeat) in global-memory scratch.
// Scratch lives in one stream-ordered allocation; no host synchronisation.
#include <mutex>

#include "cuda_utils.cuh"
#include "ops/cuda/block_scan.cuh"
#include "ops/connected_components.h"
#include "ops/dilate.h"
#include "ops/focus_chips.h"
#include "ops/focus_chips_block.h"

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

// Step 5 of kMergeCheaper for the whole block on rects [0, count) (shared or global memory): each round
// every thread finds its best pair (focus_best_pair_key), the block takes the maximum, thread 0 merges
// it; the same rounds as focus_chips_cpu's serial loop. Every thread calls it and gets the count.
// Not inlined: inlined into the 1024-thread shared kernel (64 registers a thread) it made ptxas spill.
__device__ __noinline__ int32_t block_merge_cheaper(int32_t* rects, int32_t count, int min_size, int height,
                                                    int width) {
  __shared__ unsigned long long best;
  const int tid = threadIdx.x, threads = blockDim.x;
  while (true) {
    if (tid == 0) best = 0;
    __syncthreads();
    const unsigned long long mine = focus_best_pair_key(rects, count, min_size, height, width, tid, threads);
    if (mine != 0) atomicMax(&best, mine);
    __syncthreads();
    const unsigned long long key = best;
    if (key == 0) return count;
    if (tid == 0) focus_apply_pair(rects, count, key, min_size, height, width);
    --count;
    __syncthreads();  // the next round reads the merged rectangles (and thread 0 resets best)
  }
}

__global__ void __launch_bounds__(kFocusThreads)
    focus_chips_block_kernel(const float* probs, const int32_t* valid_hw, int height, int width, float threshold,
                             int dilation, int min_size, int merge, int64_t max_rects, FocusScratch scratch) {
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
  if (merge == kMergeCheaper) {
    count = block_merge_cheaper(rects, count, min_size, h, w);
    focus_write_sorted(rects, count, previous, tid, kFocusThreads);
    __syncthreads();
    rects = previous;
  }
  while (merge == kMergeTouching) {
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

// ---- the shared-memory kernel ----

// One block of kFocusBlockThreads per map; dynamic shared memory: focus_block_bytes(height, width).
// Every step below is a loop over the block's threads with a __syncthreads() after it (the next step
// reads what other threads wrote); __syncthreads_or both synchronises and ORs a per-thread flag, so the
// early exits and the loop's end are taken by the whole block together.
__global__ void __launch_bounds__(kFocusBlockThreads)
    focus_chips_shared_kernel(const float* probs, const int32_t* valid_hw, int height, int width, float threshold,
                              int dilation, int min_size, int merge, int64_t capacity, int32_t* out_rects,
                              int32_t* counts, int32_t* bad_maps) {
  extern __shared__ int4 shared_memory[];  // int4: 16-byte alignment for the int32 arrays
  __shared__ int32_t warp_totals[32];
  const int b = blockIdx.x, tid = threadIdx.x, T = kFocusBlockThreads;
  // The valid region, clamped to the padded map (runtime/ops.py has checked it already).
  const int h = min(max(valid_hw[2 * b], 0), height), w = min(max(valid_hw[2 * b + 1], 0), width);
  const FocusBlock s = focus_block_layout(shared_memory, h, w, capacity);
  const float* prob = probs + static_cast<int64_t>(b) * height * width;

  bool on = false, bad = false;
  focus_block_threshold(s, prob, width, threshold, tid, T, &on, &bad);
  bad = __syncthreads_or(bad);
  on = __syncthreads_or(on);
  if (bad || !on) {
    if (tid == 0) counts[b] = 0, bad_maps[b] = bad;
    return;
  }
  const int r = dilation / 2;
  focus_block_dilate_rows(s, r, tid, T);
  __syncthreads();
  focus_block_dilate_cols(s, r, tid, T);
  __syncthreads();
  focus_block_label_init(s, tid, T);
  __syncthreads();
  focus_block_label_merge(s, tid, T);  // concurrent unions: ccl_unite's atomicMin retries keep it exact
  __syncthreads();
  focus_block_label_compress(s, tid, T);
  __syncthreads();
  int32_t count;
  const int32_t first = block_exclusive_scan(focus_block_count_pixel_roots(s, tid, T), warp_totals, &count);
  focus_block_number_pixel_roots(s, first, tid, T);  // writes only its own chunk's roots and boxes
  __syncthreads();
  focus_block_pixel_boxes(s, tid, T);  // shared-memory atomics
  __syncthreads();
  focus_block_grow(s, count, min_size, tid, T);
  __syncthreads();
  if (merge == kMergeCheaper) {
    count = block_merge_cheaper(s.boxes, count, min_size, h, w);
    focus_write_sorted(s.boxes, count, out_rects + static_cast<int64_t>(b) * capacity * 4, tid, T);
    if (tid == 0) counts[b] = count, bad_maps[b] = 0;
    return;
  }
  while (true) {
    focus_block_rect_init(s, count, tid, T);
    __syncthreads();
    if (!__syncthreads_or(focus_block_rect_merge(s, count, tid, T))) break;  // no touching pair: done
    focus_block_rect_compress(s, count, tid, T);
    __syncthreads();  // the root count below reads other threads' parents
    int32_t groups;
    const int32_t rank = block_exclusive_scan(focus_block_count_rect_roots(s, count, tid, T), warp_totals, &groups);
    focus_block_number_rect_roots(s, count, rank, tid, T);
    __syncthreads();
    focus_block_rect_union(s, count, tid, T);
    __syncthreads();
    focus_block_rect_grow(s, groups, min_size, tid, T);
    __syncthreads();
    count = groups;
  }
  focus_block_owner_clear(s, tid, T);  // the work area's last use (parent) ended at the barrier above
  __syncthreads();
  focus_block_owner_mark(s, count, tid, T);
  __syncthreads();
  int32_t total;
  const int32_t rank = block_exclusive_scan(focus_block_count_owners(s, tid, T), warp_totals, &total);
  focus_block_write_chips(s, rank, out_rects + static_cast<int64_t>(b) * capacity * 4, tid, T);
  if (tid == 0) counts[b] = count, bad_maps[b] = 0;
}

// Bytes of dynamic shared memory the shared kernel may use on the current device (0 when unknown). The
// attribute is set once per device to the opt-in maximum (above the 48 KB default).
inline int64_t focus_shared_limit() {
  constexpr int kMaxDevices = 64;
  static int64_t limits[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return 0;
  std::call_once(once[device], [device] {
    int optin = 0;
    cudaFuncAttributes attributes;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
        cudaFuncGetAttributes(&attributes, focus_chips_shared_kernel) != cudaSuccess)
      return;
    const int dynamic = optin - static_cast<int>(attributes.sharedSizeBytes);
    if (dynamic > 0 && cudaFuncSetAttribute(focus_chips_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            dynamic) == cudaSuccess)
      limits[device] = dynamic;
  });
  return limits[device];
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
                              float threshold, int dilation, int min_size, int merge, int32_t* chips,
                              int32_t* batch_index, int32_t* status, std::uintptr_t stream) {
  check_arg(dilation >= 1 && dilation % 2 == 1, "dilation: expected an odd size >= 1");
  check_arg(min_size >= 1, "min_size: expected >= 1");
  check_arg(merge == kMergeTouching || merge == kMergeCheaper, "merge: expected kMergeTouching or kMergeCheaper");
  check_arg(merge == kMergeTouching || detail::max_components(height, width) <= 65535,
            "merge cheaper: maps of more than 65535 possible components (the pair keys' range)");
  cudaStream_t s = as_stream(stream);
  if (batch == 0) {
    AF_CUDA_CHECK(cudaMemsetAsync(status, 0, 2 * sizeof(int32_t), s));
    return;
  }
  const int64_t map_size = static_cast<int64_t>(height) * width;
  const int64_t max_rects = detail::max_components(height, width);
  const int64_t shared_bytes = detail::focus_block_bytes(height, width);
  if (shared_bytes <= detail::focus_shared_limit()) {
    // rects (batch * max_rects * 4), counts (batch), bad (batch): all int32.
    int32_t* block = nullptr;
    scratch_malloc_async(reinterpret_cast<void**>(&block), batch * (4 * max_rects + 2) * sizeof(int32_t), s);
    int32_t* rects = block;
    int32_t* counts = rects + batch * max_rects * 4;
    int32_t* bad = counts + batch;
    detail::focus_chips_shared_kernel<<<batch, detail::kFocusBlockThreads, shared_bytes, s>>>(
        probs, valid_hw, height, width, threshold, dilation, min_size, merge, max_rects, rects, counts, bad);
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess) {
      detail::focus_chips_gather_kernel<<<batch, detail::kFocusThreads, 0, s>>>(counts, bad, rects, max_rects, batch,
                                                                             chips, batch_index, status);
      err = cudaGetLastError();
    }
    AF_CUDA_CHECK(cudaFreeAsync(block, s));
    AF_CUDA_CHECK(err);
    return;
  }
  // Larger maps: the global-memory kernel.
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
      probs, valid_hw, height, width, threshold, dilation, min_size, merge, max_rects, scratch);
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
