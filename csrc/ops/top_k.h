// top_k: indices of the k highest scores, by descending score, ties by lower index.
#pragma once
#include <cstdint>

#include "common.h"
#include "ops/box_iou.h"

namespace autofocus {

// out has room for min(k, n); returns min(k, n).
int64_t top_k_cpu(const float* scores, int64_t n, int64_t k, int64_t* out);

// CUDA: out has room for min(k, n) (device).
void top_k_cuda(const float* scores, int64_t n, int64_t k, int64_t* out, std::uintptr_t stream);

}  // namespace autofocus
