// paint_boxes on the CPU: the shared per-box body, box by box.
#include "ops/paint_boxes.h"

namespace autofocus {

void paint_boxes_cpu(float* out, int64_t maps, int64_t height, int64_t width, const float* boxes,
                     const int64_t* index, const uint8_t* keep, int64_t n, double stride) {
  for (int64_t k = 0; k < n; ++k) {
    if (keep != nullptr && !keep[k]) continue;
    paint_box(boxes + 4 * k, index[k], maps, height, width, stride, out);
  }
}

}  // namespace autofocus
