// soft_nms on the GPU, one block of 1024 threads per segment (the whole input when not segmented), in
// shared memory when the device has room for it (soft_nms_components_kernel), by segment size:
//  - up to kSoftNmsOneWarpMax boxes: one warp runs the sequential definition, each lane owning the same
//    boxes every take (scores in shared memory touched only by their lane), a warp-shuffle argmax per take;
//  - up to kSoftNmsComponentCap boxes: soft_nms_components.h, the overlap graph's components found by an
//    x1 sort and sweep with union-find, one warp per component (taken dynamically), the outputs merged by
//    one block radix sort;
//  - larger: soft_nms_block_sequential, every take one pass of all threads over the segment (global
//    scratch) and one block-wide argmax (also the kernel used when shared memory is short).
#include <cfloat>
#include <mutex>

#include <cub/block/block_radix_sort.cuh>

#include "cuda_utils.cuh"
#include "ops/cuda/block_scan.cuh"
#include "ops/cuda/sort_keys.cuh"
#include "ops/soft_nms.h"
#include "ops/soft_nms_components.h"

namespace autofocus {
namespace detail {

constexpr int kSoftNmsThreads = 1024;

__device__ __forceinline__ void keep_better(float& best, int64_t& best_index, float score, int64_t index) {
  if (score_before(score, index, best, best_index)) best = score, best_index = index;
}

// Block-wide argmax of (best, best_index); every thread returns the winner.
__device__ void block_argmax(float& best, int64_t& best_index, float* warp_best, int64_t* warp_index) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float s = __shfl_down_sync(0xffffffffu, best, offset);
    const long long i = __shfl_down_sync(0xffffffffu, static_cast<long long>(best_index), offset);
    keep_better(best, best_index, s, i);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_best[warp] = best, warp_index[warp] = best_index;
  __syncthreads();
  if (warp == 0) {
    best = lane < blockDim.x / 32 ? warp_best[lane] : -INFINITY;
    best_index = lane < blockDim.x / 32 ? warp_index[lane] : INT64_MAX;
    for (int offset = 16; offset > 0; offset /= 2) {
      const float s = __shfl_down_sync(0xffffffffu, best, offset);
      const long long i = __shfl_down_sync(0xffffffffu, static_cast<long long>(best_index), offset);
      keep_better(best, best_index, s, i);
    }
    if (lane == 0) warp_best[32] = best, warp_index[32] = best_index;
  }
  __syncthreads();
  best = warp_best[32];
  best_index = warp_index[32];
}

// One block per segment (offsets null: one segment [0, n)). Indices are local to the segment inside the
// loop and written out global (+ base); the segmented form fills the segment's unused slots with -1 / 0.
__device__ void soft_nms_block_sequential(const float* boxes, const float* scores, const int64_t* labels,
                                          const int64_t* offsets, int64_t total, int method, float sigma,
                                          float iou_threshold, float score_threshold, int64_t max_output,
                                          float* current, float* area, int64_t* keep, float* out_scores,
                                          int64_t* out_count) {
  __shared__ float warp_best[33];
  __shared__ int64_t warp_index[33];
  const int64_t base = offsets != nullptr ? offsets[blockIdx.x] : 0;
  const int64_t n = offsets != nullptr ? offsets[blockIdx.x + 1] - base : total;
  const int64_t limit = max_output < 0 ? n : (max_output < n ? max_output : n);
  boxes += 4 * base, scores += base, current += base, area += base, keep += base, out_scores += base;
  if (labels != nullptr) labels += base;
  float best = -INFINITY;
  int64_t best_index = INT64_MAX;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    area[j] = box_area(boxes + 4 * j);
    // Originally below the threshold: never output. +0.f turns -0 into +0 (one zero for the ties).
    const float s = soft_nms_alive(scores[j], score_threshold) ? scores[j] + 0.f : -INFINITY;
    current[j] = s;
    if (s != -INFINITY) keep_better(best, best_index, s, j);
  }
  int64_t count = 0;
  while (count < limit) {
    block_argmax(best, best_index, warp_best, warp_index);
    if (best == -INFINITY) break;  // same in every thread
    const int64_t m = best_index;
    if (threadIdx.x == 0) keep[count] = m + base, out_scores[count] = best;
    ++count;
    const float* bm = boxes + 4 * m;
    const float area_m = area[m];
    const int64_t label_m = labels != nullptr ? labels[m] : 0;
    best = -INFINITY;
    best_index = INT64_MAX;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {  // each thread owns the same j every pass
      float s = current[j];
      if (s == -INFINITY) continue;
      if (j == m) {
        current[j] = -INFINITY;
        continue;
      }
      if (labels == nullptr || labels[j] == label_m) {
        const float iou = box_iou(bm, area_m, boxes + 4 * j, area[j]);
        if (iou > 0.f) {
          const float decayed = s * soft_nms_weight(iou, method, sigma, iou_threshold);
          if (decayed != s) {
            s = soft_nms_alive(decayed, score_threshold) ? decayed : -INFINITY;
            current[j] = s;
          }
        }
      }
      if (s != -INFINITY) keep_better(best, best_index, s, j);
    }
  }
  if (offsets != nullptr) {
    for (int64_t j = count + threadIdx.x; j < n; j += blockDim.x) keep[j] = -1, out_scores[j] = 0.f;
    if (threadIdx.x == 0) out_count[blockIdx.x] = count;
  } else if (threadIdx.x == 0) {
    *out_count = count;
  }
}

__global__ void __launch_bounds__(kSoftNmsThreads)
    soft_nms_kernel(const float* boxes, const float* scores, const int64_t* labels, const int64_t* offsets,
                    int64_t total, int method, float sigma, float iou_threshold, float score_threshold,
                    int64_t max_output, float* current, float* area, int64_t* keep, float* out_scores,
                    int64_t* out_count) {
  soft_nms_block_sequential(boxes, scores, labels, offsets, total, method, sigma, iou_threshold, score_threshold,
                            max_output, current, area, keep, out_scores, out_count);
}

// ---- the shared-memory kernel ----

constexpr int kSoftNmsOneWarpMax = 256;
constexpr int kSoftNmsSortItems = static_cast<int>(kSoftNmsComponentCap / kSoftNmsThreads);
using SoftNmsSort = cub::BlockRadixSort<unsigned long long, kSoftNmsThreads, kSoftNmsSortItems>;

// Dynamic shared memory of one block, each array kSoftNmsComponentCap long.
struct SoftNmsShared {
  float* boxes;  // 4 per box
  float* scores;  // current scores, -inf once taken or dropped
  float* areas;
  int32_t* parent;     // union-find, then -(rank + 2) at each component's root
  int32_t* order;      // live boxes in x1 order; then each component's fill cursor
  int32_t* start;      // each component's first slot
  int32_t* size;       // each component's boxes, then its takes
  int32_t* member;     // the boxes, component by component
  int32_t* out_index;  // the takes, in each component's slots
  float* out_score;
  SoftNmsSort::TempStorage* sort;
};

constexpr size_t kSoftNmsSharedBytes =
    (13 * kSoftNmsComponentCap * 4 + 15) / 16 * 16 + sizeof(SoftNmsSort::TempStorage);

__device__ SoftNmsShared soft_nms_shared_layout(int4* memory) {
  SoftNmsShared s;
  constexpr int64_t cap = kSoftNmsComponentCap;
  float* f = reinterpret_cast<float*>(memory);
  s.boxes = f;
  s.scores = f + 4 * cap;
  s.areas = f + 5 * cap;
  int32_t* i = reinterpret_cast<int32_t*>(f + 6 * cap);
  s.parent = i;
  s.order = i + cap;
  s.start = i + 2 * cap;
  s.size = i + 3 * cap;
  s.member = i + 4 * cap;
  s.out_index = i + 5 * cap;
  s.out_score = reinterpret_cast<float*>(i + 6 * cap);
  s.sort = reinterpret_cast<SoftNmsSort::TempStorage*>(memory + (13 * cap * 4 + 15) / 16);
  return s;
}

// Warp-wide (score desc, index asc) argmax by an xor butterfly: every lane ends with the winner.
__device__ __forceinline__ void warp_argmax(float& best, int32_t& best_index) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float score = __shfl_xor_sync(0xffffffffu, best, offset);
    const int32_t index = __shfl_xor_sync(0xffffffffu, best_index, offset);
    if (score_before(score, index, best, best_index)) best = score, best_index = index;
  }
}

// One warp runs the sequential Soft-NMS over boxes member[0..count) (member null: 0..count-1), writing its
// takes to out_index / out_score; returns how many. Lane l visits members l, l + 32, ... on every take, so
// each score is read and written by one lane only; the shuffles order the takes.
__device__ int32_t warp_soft_nms(const SoftNmsShared& s, const int32_t* member, int32_t count, int64_t limit,
                                 const SoftNmsParams& params, int32_t* out_index, float* out_score) {
  const int lane = threadIdx.x & 31;
  int32_t taken = -1, k = 0;
  while (k < limit) {
    float best = -INFINITY;
    int32_t best_index = INT32_MAX;
    for (int32_t t = lane; t < count; t += 32)
      soft_nms_visit(s.scores, s.boxes, s.areas, member != nullptr ? member[t] : t, taken, params, &best, &best_index);
    warp_argmax(best, best_index);
    if (best == -INFINITY) break;
    if (lane == 0) out_index[k] = best_index, out_score[k] = best;
    taken = best_index;
    ++k;
  }
  return k;
}

// Same arguments and outputs as soft_nms_kernel; dynamic shared memory kSoftNmsSharedBytes.
__global__ void __launch_bounds__(kSoftNmsThreads)
    soft_nms_components_kernel(const float* boxes, const float* scores, const int64_t* labels,
                               const int64_t* offsets, int64_t total, int method, float sigma, float iou_threshold,
                               float score_threshold, int64_t max_output, float* current, float* area,
                               int64_t* keep, float* out_scores, int64_t* out_count) {
  const int64_t base = offsets != nullptr ? offsets[blockIdx.x] : 0;
  const int64_t n64 = offsets != nullptr ? offsets[blockIdx.x + 1] - base : total;
  if (n64 > kSoftNmsComponentCap) {
    soft_nms_block_sequential(boxes, scores, labels, offsets, total, method, sigma, iou_threshold, score_threshold,
                              max_output, current, area, keep, out_scores, out_count);
    return;
  }
  extern __shared__ int4 shared_memory[];
  __shared__ int32_t warp_totals[32];
  __shared__ int32_t next_component, one_warp_count;
  const SoftNmsShared s = soft_nms_shared_layout(shared_memory);
  const SoftNmsParams params{method, sigma, iou_threshold, score_threshold};
  const int tid = threadIdx.x, T = kSoftNmsThreads, lane = tid & 31, warp = tid >> 5;
  const int32_t n = static_cast<int32_t>(n64);
  const int64_t limit = max_output < 0 ? n64 : (max_output < n64 ? max_output : n64);
  boxes += 4 * base, scores += base, keep += base, out_scores += base;
  if (labels != nullptr) labels += base;

  for (int32_t j = tid; j < n; j += T) {
    for (int c = 0; c < 4; ++c) s.boxes[4 * j + c] = boxes[4 * j + c];
    s.areas[j] = box_area(boxes + 4 * j);
    // Originally below the threshold: never output. +0.f turns -0 into +0 (one zero for the ties).
    s.scores[j] = soft_nms_alive(scores[j], score_threshold) ? scores[j] + 0.f : -INFINITY;
    s.parent[j] = j;
  }
  if (tid == 0) next_component = 0;
  __syncthreads();  // the arrays are loaded

  int32_t count;  // outputs
  if (n <= kSoftNmsOneWarpMax) {
    if (warp == 0) {
      const int32_t k = warp_soft_nms(s, nullptr, n, limit, params, s.out_index, s.out_score);
      if (lane == 0) one_warp_count = k;
    }
    __syncthreads();  // the takes are written
    count = one_warp_count;
    for (int32_t p = tid; p < count; p += T) keep[p] = s.out_index[p] + base, out_scores[p] = s.out_score[p];
  } else {
    // Live boxes in x1 order.
    unsigned long long keys[kSoftNmsSortItems];
    int32_t live = 0;
    for (int e = 0; e < kSoftNmsSortItems; ++e) {
      const int32_t j = tid * kSoftNmsSortItems + e;
      const bool on = j < n && s.scores[j] != -INFINITY;
      keys[e] = on ? soft_nms_x1_key(s.boxes[4 * j], j) : kSoftNmsNoKey;
      live += __syncthreads_count(on);
    }
    SoftNmsSort(*s.sort).Sort(keys, 0, kSoftNmsKeyBits);
    for (int e = 0; e < kSoftNmsSortItems; ++e) {
      const int32_t slot = tid * kSoftNmsSortItems + e;
      if (slot < live) s.order[slot] = soft_nms_key_index(keys[e]);
    }
    __syncthreads();  // order is complete
    // Sweep: each live box against the boxes after it in x1 order that start before its x2.
    for (int32_t a = tid; a < live; a += T) {
      const int32_t i = s.order[a];
      const float x2 = s.boxes[4 * i + 2];
      for (int32_t b = a + 1; b < live; ++b) {
        const int32_t j = s.order[b];
        if (s.boxes[4 * j] >= x2) break;
        if (soft_nms_linked(s.boxes + 4 * i, s.boxes + 4 * j, labels, i, j)) ccl_unite(s.parent, i, j);
      }
    }
    __syncthreads();  // every union is done
    for (int32_t j = tid; j < n; j += T) s.parent[j] = ccl_find(s.parent, j);
    __syncthreads();  // parents point at roots (the root test below reads other threads' entries)
    // Number the components (roots of live boxes) in index order, chunk by chunk.
    const int32_t chunk = (n + T - 1) / T, first = min(tid * chunk, n), last = min(first + chunk, n);
    int32_t roots = 0;
    for (int32_t j = first; j < last; ++j) roots += s.scores[j] != -INFINITY && s.parent[j] == j;
    int32_t components;
    int32_t rank = block_exclusive_scan(roots, warp_totals, &components);
    for (int32_t j = first; j < last; ++j) {
      if (s.scores[j] == -INFINITY || s.parent[j] != j) continue;
      s.size[rank] = 0;
      s.parent[j] = -(rank + 2);
      ++rank;
    }
    __syncthreads();  // roots numbered
    for (int32_t j = tid; j < n; j += T)
      if (s.scores[j] != -INFINITY) atomicAdd(&s.size[soft_nms_component_of(s.parent, j)], 1);
    __syncthreads();  // sizes counted
    const int32_t c_first = min(tid * ((components + T - 1) / T), components);
    const int32_t c_last = min(c_first + (components + T - 1) / T, components);
    int32_t boxes_before = 0;
    for (int32_t r = c_first; r < c_last; ++r) boxes_before += s.size[r];
    int32_t slots;
    int32_t offset = block_exclusive_scan(boxes_before, warp_totals, &slots);
    for (int32_t r = c_first; r < c_last; ++r) {
      s.start[r] = offset;
      s.order[r] = 0;  // order's x1 list is dead: the fill cursors
      offset += s.size[r];
    }
    __syncthreads();  // starts and cursors set
    for (int32_t j = tid; j < n; j += T) {
      if (s.scores[j] == -INFINITY) continue;
      const int32_t r = soft_nms_component_of(s.parent, j);
      s.member[s.start[r] + atomicAdd(&s.order[r], 1)] = j;
    }
    __syncthreads();  // members grouped
    // One warp per component, the next one taken from a shared counter when a warp finishes.
    while (true) {
      int32_t r = 0;
      if (lane == 0) r = atomicAdd(&next_component, 1);
      r = __shfl_sync(0xffffffffu, r, 0);
      if (r >= components) break;
      const int32_t k = warp_soft_nms(s, s.member + s.start[r], s.size[r], limit, params, s.out_index + s.start[r],
                                      s.out_score + s.start[r]);
      __syncwarp();  // every lane has read size[r] before lane 0 replaces it
      if (lane == 0) s.size[r] = k;
    }
    __syncthreads();  // every component is done
    // Merge: every take's (score desc, index asc) key, one sort.
    int32_t outputs = 0;
    for (int e = 0; e < kSoftNmsSortItems; ++e) {
      const int32_t slot = tid * kSoftNmsSortItems + e;
      bool on = false;
      keys[e] = kSoftNmsNoKey;
      if (slot < live) {
        const int32_t r = soft_nms_component_of(s.parent, s.member[slot]);
        on = slot - s.start[r] < s.size[r];
        if (on) keys[e] = soft_nms_output_key(s.out_score[slot], s.out_index[slot]);
      }
      outputs += __syncthreads_count(on);
    }
    SoftNmsSort(*s.sort).Sort(keys, 0, kSoftNmsKeyBits);  // the barriers since the first sort allow reusing its storage
    count = static_cast<int32_t>(outputs < limit ? outputs : limit);
    for (int e = 0; e < kSoftNmsSortItems; ++e) {
      const int32_t p = tid * kSoftNmsSortItems + e;
      if (p < count) keep[p] = soft_nms_key_index(keys[e]) + base, out_scores[p] = soft_nms_key_score(keys[e]);
    }
  }
  if (offsets != nullptr) {
    for (int32_t j = count + tid; j < n; j += T) keep[j] = -1, out_scores[j] = 0.f;
    if (tid == 0) out_count[blockIdx.x] = count;
  } else if (tid == 0) {
    *out_count = count;
  }
}

// Whether the component kernel's shared memory fits this device (its attribute set once per device).
inline bool soft_nms_shared_fits() {
  constexpr int kMaxDevices = 64;
  static bool fits[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return false;
  std::call_once(once[device], [device] {
    int optin = 0;
    cudaFuncAttributes attributes;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
        cudaFuncGetAttributes(&attributes, soft_nms_components_kernel) != cudaSuccess)
      return;
    if (attributes.sharedSizeBytes + kSoftNmsSharedBytes > static_cast<size_t>(optin)) return;
    fits[device] = cudaFuncSetAttribute(soft_nms_components_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kSoftNmsSharedBytes)) == cudaSuccess;
  });
  return fits[device];
}

// The kernel for this device: the component kernel when its shared memory fits, else the sequential one.
template <typename... Args>
void launch_soft_nms(unsigned blocks, cudaStream_t stream, Args... args) {
  if (soft_nms_shared_fits())
    soft_nms_components_kernel<<<blocks, kSoftNmsThreads, kSoftNmsSharedBytes, stream>>>(args...);
  else
    soft_nms_kernel<<<blocks, kSoftNmsThreads, 0, stream>>>(args...);
}

}  // namespace detail

void soft_nms_cuda(const float* boxes, const float* scores, const int64_t* labels, int64_t n, int method,
                   float sigma, float iou_threshold, float score_threshold, int64_t max_output, int64_t* keep,
                   float* out_scores, int64_t* out_count, std::uintptr_t stream) {
  cudaStream_t s = as_stream(stream);
  if (n == 0 || max_output == 0) {
    AF_CUDA_CHECK(cudaMemsetAsync(out_count, 0, sizeof(int64_t), s));
    return;
  }
  detail::StreamBuffer<float> current(n, s), area(n, s);
  detail::launch_soft_nms(1, s, boxes, scores, labels, static_cast<const int64_t*>(nullptr), n, method, sigma,
                          iou_threshold, score_threshold, max_output, current.get(), area.get(), keep, out_scores,
                          out_count);
  AF_CUDA_CHECK(cudaGetLastError());
}

void soft_nms_segments_cuda(const float* boxes, const float* scores, const int64_t* labels, const int64_t* offsets,
                            int64_t segments, int64_t n, int method, float sigma, float iou_threshold,
                            float score_threshold, int64_t max_output, int64_t* keep, float* out_scores,
                            int64_t* counts, std::uintptr_t stream) {
  cudaStream_t s = as_stream(stream);
  if (segments == 0) return;
  detail::StreamBuffer<float> current(n > 0 ? n : 1, s), area(n > 0 ? n : 1, s);
  detail::launch_soft_nms(static_cast<unsigned>(segments), s, boxes, scores, labels, offsets, n, method, sigma,
                          iou_threshold, score_threshold, max_output, current.get(), area.get(), keep, out_scores,
                          counts);
  AF_CUDA_CHECK(cudaGetLastError());
}

}  // namespace autofocus
