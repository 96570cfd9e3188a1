// top_k on the CPU: a partial sort of the indices in (score desc, index asc) order.
#include <algorithm>
#include <numeric>
#include <vector>

#include "ops/top_k.h"

namespace autofocus {

int64_t top_k_cpu(const float* scores, int64_t n, int64_t k, int64_t* out) {
  const int64_t m = std::min(k, n);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + m, order.end(),
                    [scores](int64_t a, int64_t b) { return score_before(scores[a], a, scores[b], b); });
  std::copy(order.begin(), order.begin() + m, out);
  return m;
}

}  // namespace autofocus
