// stack_prune on the CPU: the shared per-box rule, box by box.
#include "ops/stack_prune.h"

namespace autofocus {

void stack_prune_cpu(const float* boxes, const float* chips, int64_t n, bool per_box_chip, const float* image_hw,
                     double image_height, double image_width, double valid_lo, double valid_hi, uint8_t* keep) {
  for (int64_t i = 0; i < n; ++i) {
    const float* chip = per_box_chip ? chips + 4 * i : chips;
    const double h = image_hw != nullptr ? image_hw[2 * i] : image_height;
    const double w = image_hw != nullptr ? image_hw[2 * i + 1] : image_width;
    keep[i] = stack_prune_keep(boxes + 4 * i, chip, h, w, valid_lo, valid_hi) ? 1 : 0;
  }
}

}  // namespace autofocus
