// nms on the GPU: boxes sorted by score; one thread per (row box, 64 column boxes) pair of tiles writes
// a 64-bit mask of the later boxes it suppresses; one block then walks the rows in order, keeping a box
// when no kept box suppressed it and OR-ing its mask into the removed set.
#include "cuda_utils.cuh"
#include "ops/cuda/sort_keys.cuh"
#include "ops/nms.h"

namespace autofocus {
namespace detail {

constexpr int kNmsTile = 64;

__global__ void gather_sorted_kernel(const float* boxes, const int64_t* labels, const int64_t* order, int64_t n,
                                     float* sorted_boxes, float* sorted_area, int64_t* sorted_labels) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t src = order[i];
  for (int c = 0; c < 4; ++c) sorted_boxes[4 * i + c] = boxes[4 * src + c];
  sorted_area[i] = box_area(boxes + 4 * src);
  sorted_labels[i] = labels != nullptr ? labels[src] : 0;
}

// grid (tiles, tiles), block kNmsTile: mask[row * tiles + col_tile] bit b = row suppresses col_tile*64+b.
__global__ void nms_mask_kernel(const float* boxes, const float* area, const int64_t* labels, int64_t n,
                                int64_t tiles, float iou_threshold, uint64_t* mask) {
  const int64_t row_tile = blockIdx.y, col_tile = blockIdx.x;
  if (col_tile < row_tile) return;  // only later boxes are suppressed
  __shared__ float col_box[kNmsTile * 4];
  __shared__ float col_area[kNmsTile];
  __shared__ int64_t col_label[kNmsTile];
  const int64_t col0 = col_tile * kNmsTile;
  const int cols = static_cast<int>(n - col0 < kNmsTile ? n - col0 : kNmsTile);
  if (threadIdx.x < cols) {
    for (int c = 0; c < 4; ++c) col_box[4 * threadIdx.x + c] = boxes[4 * (col0 + threadIdx.x) + c];
    col_area[threadIdx.x] = area[col0 + threadIdx.x];
    col_label[threadIdx.x] = labels[col0 + threadIdx.x];
  }
  __syncthreads();
  const int64_t row = row_tile * kNmsTile + threadIdx.x;
  if (row >= n) return;
  const float* rb = boxes + 4 * row;
  uint64_t bits = 0;
  for (int b = (col_tile == row_tile ? threadIdx.x + 1 : 0); b < cols; ++b) {
    if (col_label[b] != labels[row]) continue;
    if (nms_suppresses(box_iou(rb, area[row], col_box + 4 * b, col_area[b]), iou_threshold)) bits |= 1ull << b;
  }
  mask[row * tiles + col_tile] = bits;
}

// One block: rows in score order; shared `removed` bitset over all boxes (tiles words).
__global__ void nms_walk_kernel(const uint64_t* mask, const int64_t* order, int64_t n, int64_t tiles,
                                int64_t* keep, int64_t* out_count) {
  extern __shared__ uint64_t removed[];
  for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x) removed[t] = 0;
  __syncthreads();
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool is_removed = (removed[i / kNmsTile] >> (i % kNmsTile)) & 1ull;  // same value in every thread
    if (is_removed) continue;
    if (threadIdx.x == 0) keep[count] = order[i];
    ++count;
    __syncthreads();  // everyone has read removed[] before it changes
    for (int64_t t = i / kNmsTile + threadIdx.x; t < tiles; t += blockDim.x) removed[t] |= mask[i * tiles + t];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out_count = count;
}

}  // namespace detail

void nms_cuda(const float* boxes, const float* scores, const int64_t* labels, int64_t n, float iou_threshold,
              int64_t* keep, int64_t* out_count, std::uintptr_t stream) {
  check_nms_size(n);
  cudaStream_t s = as_stream(stream);
  if (n == 0) {
    AF_CUDA_CHECK(cudaMemsetAsync(out_count, 0, sizeof(int64_t), s));
    return;
  }
  const int64_t tiles = (n + detail::kNmsTile - 1) / detail::kNmsTile;
  const size_t walk_shared = tiles * sizeof(uint64_t);
  check_arg(walk_shared <= 48 * 1024, "nms: too many boxes for the CUDA kernel (at most 393216)");
  detail::StreamBuffer<int64_t> order(n, s), sorted_labels(n, s);
  detail::StreamBuffer<float> sorted_boxes(4 * n, s), sorted_area(n, s);
  detail::StreamBuffer<uint64_t> mask(n * tiles, s);
  detail::order_by_score_cuda(scores, n, order.get(), s);
  detail::gather_sorted_kernel<<<detail::blocks_for(n, 256), 256, 0, s>>>(
      boxes, labels, order.get(), n, sorted_boxes.get(), sorted_area.get(), sorted_labels.get());
  AF_CUDA_CHECK(cudaGetLastError());
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles));
  detail::nms_mask_kernel<<<grid, detail::kNmsTile, 0, s>>>(sorted_boxes.get(), sorted_area.get(),
                                                             sorted_labels.get(), n, tiles, iou_threshold,
                                                             mask.get());
  AF_CUDA_CHECK(cudaGetLastError());
  detail::nms_walk_kernel<<<1, 256, walk_shared, s>>>(mask.get(), order.get(), n, tiles, keep, out_count);
  AF_CUDA_CHECK(cudaGetLastError());
}

}  // namespace autofocus
