// decode on the GPU: every cell gets a 64-bit key (image, descending score) or "not a candidate" (image
// = images, past the last); a stable radix sort by key over the bits in use (cells enter in flat order,
// so ties keep the smaller flat index first) lines the candidates up image by image; each of the first
// max_candidates of an image is decoded with the shared decode_cell into its output row. Non-finite
// scores (any cell) and non-finite decoded boxes are flagged in status, read with the row count.
#include <cub/device/device_radix_sort.cuh>

#include "cuda_utils.cuh"
#include "ops/cuda/sort_keys.cuh"
#include "ops/decode.h"

namespace autofocus {
namespace detail {

__global__ void decode_keys_kernel(const float* scores, int64_t total, int64_t cells, int64_t images,
                                   double score_threshold, uint64_t* keys, int64_t* index,
                                   int64_t* candidates_per_image, int64_t* status) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const float s = scores[i];
  const int64_t image = i / cells;
  index[i] = i;
  if (!isfinite(s)) status[0] = 1;  // (every writer stores the same value)
  if (decode_is_candidate(s, score_threshold)) {
    keys[i] = (static_cast<uint64_t>(image) << 32) | descending_key(s);
    atomicAdd(reinterpret_cast<unsigned long long*>(candidates_per_image + image), 1ull);
  } else {
    keys[i] = static_cast<uint64_t>(images) << 32;  // not a candidate: sorts after every image
  }
}

// One thread: per image, where its candidates start in the sorted order and where its rows start in the
// output (exclusive scans over the few images), and the total row count.
__global__ void decode_offsets_kernel(const int64_t* candidates_per_image, int64_t images, int64_t max_candidates,
                                      int64_t* sorted_start, int64_t* out_start, int64_t* out_count) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t sorted = 0, out = 0;
  for (int64_t n = 0; n < images; ++n) {
    sorted_start[n] = sorted;
    out_start[n] = out;
    const int64_t c = candidates_per_image[n];
    sorted += c;
    out += c < max_candidates ? c : max_candidates;
  }
  *out_count = out;
}

__global__ void decode_write_kernel(const uint64_t* keys, const int64_t* index, int64_t total, int64_t images,
                                    const float* ltrb, int64_t classes, int64_t height, int64_t width, float stride,
                                    int64_t max_candidates, const float* scales, const float* offsets,
                                    const float* scores, const int64_t* sorted_start, const int64_t* out_start,
                                    float* out_boxes, float* out_scores, int32_t* out_labels,
                                    int32_t* out_batch_index, int64_t* status) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t image = static_cast<int64_t>(keys[i] >> 32);
  if (image >= images) return;  // not a candidate
  const int64_t rank = i - sorted_start[image];
  if (rank >= max_candidates) return;
  const int64_t row = out_start[image] + rank;
  const int64_t plane = height * width;
  const int64_t flat = index[i] - image * classes * plane;
  const int64_t c = flat / plane, y = (flat % plane) / width, x = flat % width;
  decode_cell(ltrb + image * 4 * plane, height, width, y, x, stride, scales[image], offsets[2 * image],
              offsets[2 * image + 1], out_boxes + 4 * row);
  const float* box = out_boxes + 4 * row;
  if (!(isfinite(box[0]) && isfinite(box[1]) && isfinite(box[2]) && isfinite(box[3]))) status[1] = 1;
  out_scores[row] = scores[index[i]];
  out_labels[row] = static_cast<int32_t>(c);
  out_batch_index[row] = static_cast<int32_t>(image);
}

}  // namespace detail

void decode_cuda(const float* scores, const float* ltrb, int64_t images, int64_t classes, int64_t height,
                 int64_t width, float stride, double score_threshold, int64_t max_candidates,
                 const float* scales, const float* offsets, float* out_boxes, float* out_scores,
                 int32_t* out_labels, int32_t* out_batch_index, int64_t* out_count, std::uintptr_t stream) {
  cudaStream_t s = as_stream(stream);
  const int64_t cells = classes * height * width;
  const int64_t total = images * cells;
  if (total == 0 || max_candidates == 0) {
    AF_CUDA_CHECK(cudaMemsetAsync(out_count, 0, sizeof(int64_t), s));
    return;
  }
  check_arg(images < (int64_t(1) << 31), "decode: too many images for the CUDA kernel");
  detail::StreamBuffer<uint64_t> keys_in(total, s), keys_out(total, s);
  detail::StreamBuffer<int64_t> index_in(total, s), index_out(total, s);
  detail::StreamBuffer<int64_t> per_image(3 * images, s);  // candidates, sorted start, output start
  AF_CUDA_CHECK(cudaMemsetAsync(per_image.get(), 0, images * sizeof(int64_t), s));
  int64_t* status = out_count + 1;
  detail::decode_keys_kernel<<<detail::blocks_for(total, 256), 256, 0, s>>>(
      scores, total, cells, images, score_threshold, keys_in.get(), index_in.get(), per_image.get(), status);
  AF_CUDA_CHECK(cudaGetLastError());
  // Stable sort (radix sort is stable): equal keys keep the ascending flat order they entered in. Only
  // the bits in use: 32 of score and enough for the image index up to `images` (fewer radix passes).
  int end_bit = 32;
  while ((int64_t(1) << (end_bit - 32)) <= images) ++end_bit;
  size_t temp_bytes = 0;
  AF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in.get(), keys_out.get(), index_in.get(),
                                                index_out.get(), total, 0, end_bit, s));
  detail::StreamBuffer<char> temp(temp_bytes, s);
  AF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, keys_in.get(), keys_out.get(),
                                                index_in.get(), index_out.get(), total, 0, end_bit, s));
  detail::decode_offsets_kernel<<<1, 1, 0, s>>>(per_image.get(), images, max_candidates, per_image.get() + images,
                                                per_image.get() + 2 * images, out_count);
  AF_CUDA_CHECK(cudaGetLastError());
  detail::decode_write_kernel<<<detail::blocks_for(total, 256), 256, 0, s>>>(
      keys_out.get(), index_out.get(), total, images, ltrb, classes, height, width, stride, max_candidates, scales,
      offsets, scores, per_image.get() + images, per_image.get() + 2 * images, out_boxes, out_scores, out_labels,
      out_batch_index, status);
  AF_CUDA_CHECK(cudaGetLastError());
}

}  // namespace autofocus
