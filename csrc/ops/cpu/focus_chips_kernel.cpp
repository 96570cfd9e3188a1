// CPU Algorithm 1: the CPU dilate and connected components plus the shared grow/paint bodies of
// focus_chips.h, in the same step order as the CUDA block kernel.
#include <algorithm>
#include <vector>

#include "ops/connected_components.h"
#include "ops/dilate.h"
#include "ops/focus_chips.h"

namespace autofocus {

namespace {

// Steps 3-4: one grown enclosing rectangle per component of mask, in raster order.
int32_t grown_component_rects(const uint8_t* mask, int height, int width, int min_size, int32_t* labels,
                              int32_t* rects) {
  const int32_t count = connected_components_cpu(mask, height, width, labels, rects);
  for (int32_t r = 0; r < count; ++r) detail::focus_grow_rect(rects + 4 * r, min_size, height, width);
  return count;
}

}  // namespace

int32_t focus_chips_cpu(const float* prob, int height, int width, int pitch, float threshold, int dilation,
                        int min_size, int merge, int32_t* chips) {
  check_arg(merge == kMergeTouching || merge == kMergeCheaper, "merge: expected kMergeTouching or kMergeCheaper");
  const int32_t n = height * width;
  std::vector<uint8_t> binary(n), mask(n);
  bool any = false;
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) {
      const float p = prob[static_cast<int64_t>(y) * pitch + x];
      if (!detail::focus_is_finite(p)) return -1;
      binary[y * width + x] = p >= threshold;
      any |= p >= threshold;
    }
  if (!any) return 0;
  dilate_cpu(binary.data(), height, width, dilation, mask.data());

  const int64_t max_rects = detail::max_components(height, width);
  std::vector<int32_t> labels(n), other(4 * max_rects);
  int32_t* rects = chips;  // the answer ends in `chips`; `other` holds the previous round
  int32_t count = grown_component_rects(mask.data(), height, width, min_size, labels.data(), rects);
  if (merge == kMergeCheaper) {
    check_arg(count <= 65535, "merge cheaper: more than 65535 components in one map");
    for (uint64_t key; (key = detail::focus_best_pair_key(rects, count, min_size, height, width, 0, 1)) != 0;)
      count = detail::focus_apply_pair(rects, count, key, min_size, height, width);
    std::copy(rects, rects + 4 * count, other.begin());
    detail::focus_write_sorted(other.data(), count, chips, 0, 1);
    return count;
  }
  int32_t* previous = other.data();
  while (true) {
    std::swap(rects, previous);
    std::fill(mask.begin(), mask.end(), 0);
    for (int32_t r = 0; r < count; ++r) {
      const int32_t* rect = previous + 4 * r;
      for (int32_t j = 0, area = detail::focus_rect_area(rect); j < area; ++j)
        mask[detail::focus_rect_cell(rect, j, width)] = 1;
    }
    const int32_t merged = grown_component_rects(mask.data(), height, width, min_size, labels.data(), rects);
    if (merged == count) break;  // nothing touched: these are the chips
    count = merged;
  }
  if (rects != chips) std::copy(rects, rects + 4 * count, chips);
  return count;
}

}  // namespace autofocus
