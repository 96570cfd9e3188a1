// nms on the CPU: the pairs above the IoU threshold come from an x1 sweep (only overlapping boxes are
// ever compared), then one greedy pass in score order.
#include <vector>

#include "ops/cpu/box_pairs.h"
#include "ops/nms.h"

namespace autofocus {

int64_t nms_cpu(const float* boxes, const float* scores, const int64_t* labels, int64_t n,
                float iou_threshold, int64_t* keep) {
  std::vector<int64_t> ids(n);
  std::vector<float> areas(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = i;
    areas[i] = box_area(boxes + 4 * i);
  }
  // Adjacency (CSR) of "would suppress each other".
  std::vector<std::pair<int64_t, int64_t>> pairs;
  detail::for_each_overlapping_pair(boxes, labels, ids, areas, [&](int64_t i, int64_t j, float iou) {
    if (nms_suppresses(iou, iou_threshold)) pairs.emplace_back(i, j);
  });
  std::vector<int64_t> start(n + 1, 0), adj(2 * pairs.size());
  for (const auto& p : pairs) ++start[p.first + 1], ++start[p.second + 1];
  for (int64_t i = 0; i < n; ++i) start[i + 1] += start[i];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (const auto& p : pairs) adj[fill[p.first]++] = p.second, adj[fill[p.second]++] = p.first;

  std::vector<char> suppressed(n, 0);
  int64_t count = 0;
  for (int64_t i : detail::order_by_score(scores, n)) {
    if (suppressed[i]) continue;
    keep[count++] = i;
    for (int64_t e = start[i]; e < start[i + 1]; ++e) suppressed[adj[e]] = 1;
  }
  return count;
}

}  // namespace autofocus
