// The CUDA component kernel's Soft-NMS (soft_nms_components.h) run serially on the CPU, step by step as
// the kernel runs them. Not the fast CPU path (soft_nms_cpu is); the tests' check of the GPU's logic.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/soft_nms_components.h"

namespace autofocus {

int64_t soft_nms_components_cpu(const float* boxes, const float* scores, const int64_t* labels, int64_t n,
                                int method, float sigma, float iou_threshold, float score_threshold,
                                int64_t max_output, int64_t* keep, float* out_scores) {
  check_arg(n <= detail::kSoftNmsComponentCap, "soft_nms_components_cpu: at most 2048 boxes");
  const detail::SoftNmsParams params{method, sigma, iou_threshold, score_threshold};
  const int32_t count = static_cast<int32_t>(n);
  const int64_t limit = max_output < 0 ? n : std::min(max_output, n);
  // Load: current scores (-inf: never output), areas, and the live boxes' sweep keys.
  std::vector<float> current(count), areas(count);
  std::vector<uint64_t> keys;
  std::vector<int32_t> parent(count);
  for (int32_t j = 0; j < count; ++j) {
    areas[j] = box_area(boxes + 4 * j);
    current[j] = soft_nms_alive(scores[j], score_threshold) ? scores[j] + 0.f : -INFINITY;
    parent[j] = j;
    if (current[j] != -INFINITY) keys.push_back(detail::soft_nms_x1_key(boxes[4 * j], j));
  }
  std::sort(keys.begin(), keys.end());
  const size_t live = keys.size();
  // Sweep: pairs in x1 order while the next box starts left of this one's x2.
  for (size_t a = 0; a < live; ++a) {
    const int32_t i = detail::soft_nms_key_index(keys[a]);
    for (size_t b = a + 1; b < live; ++b) {
      const int32_t j = detail::soft_nms_key_index(keys[b]);
      if (boxes[4 * j] >= boxes[4 * i + 2]) break;
      if (detail::soft_nms_linked(boxes + 4 * i, boxes + 4 * j, labels, i, j)) detail::ccl_unite(parent.data(), i, j);
    }
  }
  // Components: members grouped by root (in index order within a component, as the kernel's atomics
  // may order them any way: the order does not matter to the result).
  std::vector<std::vector<int32_t>> members(count);
  for (size_t a = 0; a < live; ++a) {
    const int32_t j = detail::soft_nms_key_index(keys[a]);
    members[detail::ccl_find(parent.data(), j)].push_back(j);
  }
  // Soft-NMS per component (the kernel's warp: every member visits, then the warp-wide best is taken).
  std::vector<uint64_t> outputs;
  for (const auto& group : members) {
    int32_t m = -1;
    for (int64_t k = 0; k < limit; ++k) {
      float best = -INFINITY;
      int32_t best_index = INT32_MAX;
      for (const int32_t j : group)
        detail::soft_nms_visit(current.data(), boxes, areas.data(), j, m, params, &best, &best_index);
      if (best == -INFINITY) break;
      outputs.push_back(detail::soft_nms_output_key(best, best_index));
      m = best_index;
    }
  }
  // Merge: one sort of every output.
  std::sort(outputs.begin(), outputs.end());
  const int64_t out = std::min<int64_t>(limit, static_cast<int64_t>(outputs.size()));
  for (int64_t k = 0; k < out; ++k) {
    keep[k] = detail::soft_nms_key_index(outputs[k]);
    out_scores[k] = detail::soft_nms_key_score(outputs[k]);
  }
  return out;
}

}  // namespace autofocus
