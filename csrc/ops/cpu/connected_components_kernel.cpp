// CPU connected components: the per-pixel union-find bodies of connected_components.h, run serially in
// raster order, then roots numbered 1..C in raster order and one box per component.
#include <vector>

#include "ops/connected_components.h"

namespace autofocus {

int32_t connected_components_cpu(const uint8_t* mask, int height, int width, int32_t* labels, int32_t* boxes) {
  const int32_t n = height * width;
  for (int32_t i = 0; i < n; ++i) detail::ccl_init_pixel(mask, labels, i);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) detail::ccl_merge_pixel(mask, labels, width, y, x);
  for (int32_t i = 0; i < n; ++i) detail::ccl_compress_pixel(labels, i);
  // A root is its component's first pixel, and every other pixel points at a root before it, so one
  // raster pass numbers the roots and relabels in place.
  int32_t count = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t root = labels[i];
    if (root == detail::kBackgroundLabel) {
      labels[i] = 0;
      continue;
    }
    int32_t label;
    if (root == i) {
      label = ++count;
      detail::box_empty(boxes + 4 * (label - 1));
    } else {
      label = labels[root];  // already renumbered: root < i
    }
    labels[i] = label;
    detail::box_include(boxes + 4 * (label - 1), i % width, i / width);
  }
  return count;
}

}  // namespace autofocus
