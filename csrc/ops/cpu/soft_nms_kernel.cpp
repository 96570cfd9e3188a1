// soft_nms on the CPU. Exactly the sequential definition (soft_nms.h), made fast by two facts: a box
// with IoU 0 to the taken box gets weight exactly 1, so only overlapping pairs (found once by an x1
// sweep) are ever decayed; and "the remaining box with the highest score, lowest index" is found through
// the maxima of blocks of 64 boxes (in index order), a block's maximum being recomputed only when its
// holder is taken, dropped or decayed.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/box_pairs.h"
#include "ops/soft_nms.h"

namespace autofocus {
namespace detail {

constexpr int64_t kBlock = 64;

// Current scores with removed boxes at -inf, and each block's maximum.
class BlockMax {
 public:
  explicit BlockMax(std::vector<float> scores) : score_(std::move(scores)) {
    block_max_.resize((score_.size() + kBlock - 1) / kBlock);
    for (size_t b = 0; b < block_max_.size(); ++b) refresh(b);
  }
  float score(int64_t i) const { return score_[i]; }
  void set(int64_t i, float value) {
    const float old = score_[i];
    score_[i] = value;
    if (old == block_max_[i / kBlock]) refresh(i / kBlock);  // scores only fall
  }
  // Highest score, lowest index; -1 when every box is removed.
  int64_t argmax() const {
    float best = -INFINITY;
    size_t best_block = 0;
    for (size_t b = 0; b < block_max_.size(); ++b)
      if (block_max_[b] > best) best = block_max_[b], best_block = b;
    if (best == -INFINITY) return -1;
    const size_t end = std::min(score_.size(), (best_block + 1) * kBlock);
    for (size_t i = best_block * kBlock; i < end; ++i)
      if (score_[i] == best) return static_cast<int64_t>(i);
    return -1;  // unreachable
  }

 private:
  void refresh(size_t b) {
    const size_t end = std::min(score_.size(), (b + 1) * kBlock);
    float m = -INFINITY;
    for (size_t i = b * kBlock; i < end; ++i) m = std::max(m, score_[i]);
    block_max_[b] = m;
  }
  std::vector<float> score_;
  std::vector<float> block_max_;
};

}  // namespace detail

int64_t soft_nms_cpu(const float* boxes, const float* scores, const int64_t* labels, int64_t n, int method,
                     float sigma, float iou_threshold, float score_threshold, int64_t max_output,
                     int64_t* keep, float* out_scores) {
  std::vector<float> current(n);
  std::vector<int64_t> ids;
  std::vector<float> areas(n);
  for (int64_t i = 0; i < n; ++i) {
    areas[i] = box_area(boxes + 4 * i);
    // Originally below the threshold: never output. +0.f turns -0 into +0 (one zero for the ties).
    current[i] = soft_nms_alive(scores[i], score_threshold) ? scores[i] + 0.f : -INFINITY;
    if (current[i] != -INFINITY) ids.push_back(i);
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

  detail::BlockMax remaining(std::move(current));
  const int64_t limit = max_output < 0 ? n : std::min(max_output, n);
  int64_t count = 0;
  while (count < limit) {
    const int64_t m = remaining.argmax();
    if (m < 0) break;
    keep[count] = m;
    out_scores[count] = remaining.score(m);
    ++count;
    remaining.set(m, -INFINITY);
    for (int64_t e = start[m]; e < start[m + 1]; ++e) {
      const int64_t j = adj[e];
      const float s = remaining.score(j);
      if (s == -INFINITY) continue;  // taken or dropped
      const float decayed = s * soft_nms_weight(adj_iou[e], method, sigma, iou_threshold);
      if (decayed != s) remaining.set(j, soft_nms_alive(decayed, score_threshold) ? decayed : -INFINITY);
    }
  }
  return count;
}

void soft_nms_segments_cpu(const float* boxes, const float* scores, const int64_t* labels, const int64_t* offsets,
                           int64_t segments, int method, float sigma, float iou_threshold, float score_threshold,
                           int64_t max_output, int64_t* keep, float* out_scores, int64_t* counts) {
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t base = offsets[s], n = offsets[s + 1] - base;
    const int64_t k = soft_nms_cpu(boxes + 4 * base, scores + base, labels != nullptr ? labels + base : nullptr, n,
                                   method, sigma, iou_threshold, score_threshold, max_output, keep + base,
                                   out_scores + base);
    for (int64_t i = 0; i < k; ++i) keep[base + i] += base;
    for (int64_t i = k; i < n; ++i) keep[base + i] = -1, out_scores[base + i] = 0.f;
    counts[s] = k;
  }
}

}  // namespace autofocus
