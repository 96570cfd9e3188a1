// soft_nms on the GPU: one block of 1024 threads runs the sequential definition (one block per segment
// in the segmented form). Each iteration is one pass in which every thread decays its boxes by the box
// just taken (the shared AF_HD IoU and weight) and tracks its best survivor, then one block-wide
// (score desc, index asc) argmax picks the next box.
#include <cfloat>

#include "cuda_utils.cuh"
#include "ops/cuda/sort_keys.cuh"
#include "ops/soft_nms.h"

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
__global__ void __launch_bounds__(kSoftNmsThreads)
    soft_nms_kernel(const float* boxes, const float* scores, const int64_t* labels, const int64_t* offsets,
                    int64_t total, int method, float sigma, float iou_threshold, float score_threshold,
                    int64_t max_output, float* current, float* area, int64_t* keep, float* out_scores,
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
  detail::soft_nms_kernel<<<1, detail::kSoftNmsThreads, 0, s>>>(boxes, scores, labels, nullptr, n, method, sigma,
                                                                  iou_threshold, score_threshold, max_output,
                                                                  current.get(), area.get(), keep, out_scores,
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
  detail::soft_nms_kernel<<<static_cast<unsigned>(segments), detail::kSoftNmsThreads, 0, s>>>(
      boxes, scores, labels, offsets, n, method, sigma, iou_threshold, score_threshold, max_output, current.get(),
      area.get(), keep, out_scores, counts);
  AF_CUDA_CHECK(cudaGetLastError());
}

}  // namespace autofocus
