// soft_nms by overlap components: the result of soft_nms_cpu (soft_nms.h) computed as many small
// independent Soft-NMS runs, the structure of the CUDA kernel (one block per segment, one warp per component).
//   A taken box decays only boxes it overlaps (IoU > 0, same label; every weight is exactly 1 at IoU 0), so
//   the boxes split into the connected components of the overlap graph, and each component's sequence of
//   takes (box, score) depends on that component alone. Within a component the taken (score, index) keys
//   only fall (a remaining box's score only falls, and a tie goes to the lower index), so the sequential
//   algorithm's output is the merge of the components' sequences in (score desc, index asc) order.
// Steps: sort the live boxes by x1 and sweep (pairs whose x ranges overlap), uniting overlapping pairs by
// union-find (connected_components.h's ccl_unite); group the boxes by component; run Soft-NMS on each
// component (soft_nms_visit is one box's step of one take: decay by the box just taken, then compete for
// the next); sort every output by soft_nms_output_key. The CPU build runs the same bodies serially.
#pragma once
#include <cstdint>

#include "common.h"
#include "ops/box_iou.h"
#include "ops/connected_components.h"
#include "ops/soft_nms.h"

namespace autofocus {

namespace detail {

// Segments up to this many boxes run the component kernel (indices fit kSoftNmsIndexBits of a sort key);
// larger ones run the one-block sequential kernel.
constexpr int kSoftNmsIndexBits = 11;
constexpr int64_t kSoftNmsComponentCap = int64_t{1} << kSoftNmsIndexBits;

// Float bits as an unsigned key in ascending float order (-0 and +0: one key).
AF_HD uint32_t float_order_bits(float value) {
  union {
    float f;
    uint32_t u;
  } bits;
  bits.f = value + 0.f;
  return (bits.u & 0x80000000u) ? ~bits.u : (bits.u | 0x80000000u);
}
AF_HD float float_from_order_bits(uint32_t key) {
  union {
    float f;
    uint32_t u;
  } bits;
  bits.u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  return bits.f;
}

// Keys use the low 32 + kSoftNmsIndexBits bits; "no key" sorts after every key within them.
constexpr int kSoftNmsKeyBits = 32 + kSoftNmsIndexBits;
constexpr uint64_t kSoftNmsNoKey = ~uint64_t{0};

// The component number of box j once each root holds -(number + 2) and every other box its root.
AF_HD int32_t soft_nms_component_of(const int32_t* parent, int32_t j) {
  const int32_t v = parent[j];
  return v < 0 ? -v - 2 : -parent[v] - 2;
}

// Sweep order: x1 ascending (index in the low bits).
AF_HD uint64_t soft_nms_x1_key(float x1, int32_t index) {
  return (static_cast<uint64_t>(float_order_bits(x1)) << kSoftNmsIndexBits) | static_cast<uint64_t>(index);
}
// Output order: score descending, then index ascending; the score is recovered from the key exactly.
AF_HD uint64_t soft_nms_output_key(float score, int32_t index) {
  return (static_cast<uint64_t>(~float_order_bits(score)) << kSoftNmsIndexBits) | static_cast<uint64_t>(index);
}
AF_HD int32_t soft_nms_key_index(uint64_t key) {
  return static_cast<int32_t>(key & ((uint64_t{1} << kSoftNmsIndexBits) - 1));
}
AF_HD float soft_nms_key_score(uint64_t key) {
  return float_from_order_bits(~static_cast<uint32_t>(key >> kSoftNmsIndexBits));
}

// Whether box a can decay box b or the reverse: positive-area intersection (IoU > 0) and equal labels
// (labels null: any). a, b: [x1, y1, x2, y2].
AF_HD bool soft_nms_linked(const float* a, const float* b, const int64_t* labels, int32_t i, int32_t j) {
  const float w = fminf(a[2], b[2]) - fmaxf(a[0], b[0]);
  const float h = fminf(a[3], b[3]) - fmaxf(a[1], b[1]);
  return w > 0.f && h > 0.f && (labels == nullptr || labels[i] == labels[j]);
}

struct SoftNmsParams {
  int method;
  float sigma, iou_threshold, score_threshold;
};

// Box j's step of one take: when box m was just taken (m >= 0), remove j if it is m, else decay its score
// as soft_nms_cpu does; then offer j's score for the next take (best, best_index: highest score, lowest
// index). scores: current scores, -inf once taken or dropped.
AF_HD void soft_nms_visit(float* scores, const float* boxes, const float* areas, int32_t j, int32_t m,
                          const SoftNmsParams& p, float* best, int32_t* best_index) {
  float s = scores[j];
  if (s == -INFINITY) return;
  if (j == m) {
    scores[j] = -INFINITY;
    return;
  }
  if (m >= 0) {
    const float iou = box_iou(boxes + 4 * m, areas[m], boxes + 4 * j, areas[j]);
    if (iou > 0.f) {
      const float decayed = s * soft_nms_weight(iou, p.method, p.sigma, p.iou_threshold);
      if (decayed != s) {
        s = soft_nms_alive(decayed, p.score_threshold) ? decayed : -INFINITY;
        scores[j] = s;
      }
    }
  }
  if (s != -INFINITY && score_before(s, j, *best, *best_index)) *best = s, *best_index = j;
}

}  // namespace detail

// The component algorithm on the CPU, serially (same arguments and result as soft_nms_cpu, n <=
// kSoftNmsComponentCap): the tests' handle on the CUDA kernel's logic.
int64_t soft_nms_components_cpu(const float* boxes, const float* scores, const int64_t* labels, int64_t n,
                                int method, float sigma, float iou_threshold, float score_threshold,
                                int64_t max_output, int64_t* keep, float* out_scores);

}  // namespace autofocus
