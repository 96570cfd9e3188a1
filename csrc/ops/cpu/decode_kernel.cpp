// decode on the CPU: per image, collect the candidates, keep the max_candidates best (partial sort by
// score desc, flat index asc), decode each with the shared decode_cell.
#include <algorithm>
#include <vector>

#include "ops/decode.h"

namespace autofocus {
namespace detail {

struct Candidate {
  float score;
  int64_t flat;  // c * height * width + y * width + x
};

}  // namespace detail

int64_t decode_cpu(const float* scores, const float* ltrb, int64_t images, int64_t classes, int64_t height,
                   int64_t width, float stride, double score_threshold, int64_t max_candidates,
                   const float* scales, const float* offsets, float* out_boxes, float* out_scores,
                   int32_t* out_labels, int32_t* out_batch_index) {
  const int64_t plane = height * width;
  const int64_t cells = classes * plane;
  int64_t count = 0;
  std::vector<detail::Candidate> cand;
  for (int64_t n = 0; n < images; ++n) {
    const float* s = scores + n * cells;
    cand.clear();
    for (int64_t i = 0; i < cells; ++i)
      if (decode_is_candidate(s[i], score_threshold)) cand.push_back({s[i], i});
    const auto before = [](const detail::Candidate& a, const detail::Candidate& b) {
      return score_before(a.score, a.flat, b.score, b.flat);
    };
    const int64_t keep = std::min<int64_t>(max_candidates, static_cast<int64_t>(cand.size()));
    std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(), before);
    const float* image_ltrb = ltrb + n * 4 * plane;
    for (int64_t r = 0; r < keep; ++r, ++count) {
      const int64_t flat = cand[r].flat;
      const int64_t c = flat / plane, y = (flat % plane) / width, x = flat % width;
      decode_cell(image_ltrb, height, width, y, x, stride, scales[n], offsets[2 * n], offsets[2 * n + 1],
                  out_boxes + 4 * count);
      out_scores[count] = cand[r].score;
      out_labels[count] = static_cast<int32_t>(c);
      out_batch_index[count] = static_cast<int32_t>(n);
    }
  }
  return count;
}

}  // namespace autofocus
