// CPU helpers shared by the box kernels: the (score desc, index asc) order, and a sweep over the pairs
// of boxes that overlap with positive area, so NMS-like loops visit only boxes that can interact.
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "ops/box_iou.h"

namespace autofocus {
namespace detail {

// Indices 0..n-1 by descending score, ties by lower index.
inline std::vector<int64_t> order_by_score(const float* scores, int64_t n) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [scores](int64_t a, int64_t b) { return score_before(scores[a], a, scores[b], b); });
  return order;
}

// Calls visit(i, j, iou) once for every unordered pair of listed boxes with iou > 0 (and equal labels
// when labels is non-null); i < j is not guaranteed. Sweeps by x1: a box whose x1 is at or beyond
// another's x2 cannot overlap it (nor can any box after it in x1 order).
template <typename Visit>
void for_each_overlapping_pair(const float* boxes, const int64_t* labels, const std::vector<int64_t>& ids,
                               const std::vector<float>& areas, Visit visit) {
  std::vector<int64_t> by_x1(ids);
  std::sort(by_x1.begin(), by_x1.end(), [boxes](int64_t a, int64_t b) { return boxes[4 * a] < boxes[4 * b]; });
  // Sorted structure-of-arrays copies: the inner loops read memory in order and have no branches.
  const size_t m = by_x1.size();
  std::vector<float> x1(m), y1(m), x2(m), y2(m);
  for (size_t a = 0; a < m; ++a) {
    const float* b = boxes + 4 * by_x1[a];
    x1[a] = b[0], y1[a] = b[1], x2[a] = b[2], y2[a] = b[3];
  }
  std::vector<uint32_t> hits(m);
  for (size_t a = 0; a < m; ++a) {
    const int64_t i = by_x1[a];
    // Boxes after a in x1 order whose x1 is below box a's x2: the only ones that can overlap it in x.
    const size_t end = std::lower_bound(x1.begin() + a + 1, x1.end(), x2[a]) - x1.begin();
    size_t count = 0;
    for (size_t b = a + 1; b < end; ++b) {  // branch-free compaction of the y-overlapping ones
      hits[count] = static_cast<uint32_t>(b);
      count += (y1[b] < y2[a]) & (y1[a] < y2[b]);
    }
    for (size_t h = 0; h < count; ++h) {
      const int64_t j = by_x1[hits[h]];
      if (labels != nullptr && labels[i] != labels[j]) continue;
      const float iou = box_iou(boxes + 4 * i, areas[i], boxes + 4 * j, areas[j]);
      if (iou > 0.f) visit(i, j, iou);
    }
  }
}

}  // namespace detail
}  // namespace autofocus
