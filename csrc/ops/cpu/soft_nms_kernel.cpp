// soft_nms on the CPU. Exactly the sequential definition (soft_nms.h), made fast by two facts: a box
// with IoU 0 to the taken box gets weight exactly 1, so only overlapping pairs (found once by an x1
// sweep) are ever decayed; and scores only fall, so "the remaining box with the highest score" is a
// max-heap with lazy deletion (an entry is stale once its box was decayed, taken or dropped).
#include <algorithm>
#include <queue>
#include <vector>

#include "ops/cpu/box_pairs.h"
#include "ops/soft_nms.h"

namespace autofocus {
namespace detail {

struct HeapEntry {
  float score;
  int64_t index;
};
// std::priority_queue pops the "largest": make that the first in (score desc, index asc) order.
struct HeapLess {
  bool operator()(const HeapEntry& a, const HeapEntry& b) const {
    return score_before(b.score, b.index, a.score, a.index);
  }
};

}  // namespace detail

int64_t soft_nms_cpu(const float* boxes, const float* scores, const int64_t* labels, int64_t n, int method,
                     float sigma, float iou_threshold, float score_threshold, int64_t max_output,
                     int64_t* keep, float* out_scores) {
  std::vector<float> current(scores, scores + n);
  std::vector<char> alive(n, 0);
  std::vector<int64_t> ids;
  std::vector<float> areas(n);
  std::vector<detail::HeapEntry> heap_init;
  for (int64_t i = 0; i < n; ++i) {
    areas[i] = box_area(boxes + 4 * i);
    if (soft_nms_alive(scores[i], score_threshold)) {  // originally below the threshold: never output
      alive[i] = 1;
      ids.push_back(i);
      heap_init.push_back({scores[i], i});
    }
  }
  // Neighbours (IoU > 0, same label) in CSR form, with their IoU.
  std::vector<std::pair<int64_t, int64_t>> pairs;
  std::vector<float> pair_iou;
  detail::for_each_overlapping_pair(boxes, labels, ids, areas, [&](int64_t i, int64_t j, float iou) {
    pairs.emplace_back(i, j);
    pair_iou.push_back(iou);
  });
  std::vector<int64_t> start(n + 1, 0), adj(2 * pairs.size());
  std::vector<float> adj_iou(2 * pairs.size());
  for (const auto& p : pairs) ++start[p.first + 1], ++start[p.second + 1];
  for (int64_t i = 0; i < n; ++i) start[i + 1] += start[i];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (size_t e = 0; e < pairs.size(); ++e) {
    const int64_t i = pairs[e].first, j = pairs[e].second;
    adj_iou[fill[i]] = pair_iou[e], adj[fill[i]++] = j;
    adj_iou[fill[j]] = pair_iou[e], adj[fill[j]++] = i;
  }

  std::priority_queue<detail::HeapEntry, std::vector<detail::HeapEntry>, detail::HeapLess> heap(
      detail::HeapLess{}, std::move(heap_init));
  const int64_t limit = max_output < 0 ? n : std::min(max_output, n);
  int64_t count = 0;
  while (count < limit && !heap.empty()) {
    const detail::HeapEntry top = heap.top();
    heap.pop();
    const int64_t m = top.index;
    if (!alive[m] || top.score != current[m]) continue;  // stale entry
    keep[count] = m;
    out_scores[count] = current[m];
    ++count;
    alive[m] = 0;
    for (int64_t e = start[m]; e < start[m + 1]; ++e) {
      const int64_t j = adj[e];
      if (!alive[j]) continue;
      const float decayed = current[j] * soft_nms_weight(adj_iou[e], method, sigma, iou_threshold);
      if (!soft_nms_alive(decayed, score_threshold)) {
        alive[j] = 0;
      } else if (decayed != current[j]) {
        current[j] = decayed;
        heap.push({decayed, j});
      }
    }
  }
  return count;
}

}  // namespace autofocus
