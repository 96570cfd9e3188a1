// focus_chips: Algorithm 1 of docs/design.md (FocusChip generator) on a stride-16 focus map, in map cells.
//   1. binary = prob >= threshold; 2. dilate d x d; 3. 8-connected components, one enclosing rectangle
//   each; 4. grow each rectangle about its centre to at least k x k, shifted inward at the map border;
//   5. paint the rectangles into a fresh mask and repeat 3-4 until the number of rectangles stops changing.
// The final rectangles come from labelling painted rectangles that no longer touch, so each component is
// one rectangle whose first pixel is its top-left corner: raster numbering = order by (y1, x1).
// Step 5 is the paper's merge rule (kMergeTouching: every touching pair merges, whatever the enclosing box
// costs). kMergeCheaper replaces it: a touching pair merges only when its grown enclosing rectangle has no
// more cells than the two apart (the best saving first), so two chips at the ends of an L stay two chips;
// the rectangles may then overlap, and are returned in (y1, x1, y2, x2) order.
#pragma once
#include <cstdint>

#include "common.h"

namespace autofocus {

namespace detail {

// NaN and +-inf fail (no fast-math in this build, so the comparisons are exact).
AF_HD bool focus_is_finite(float p) { return p == p && p <= 3.402823466e38f && p >= -3.402823466e38f; }

// Grows [lo, hi) to at least k cells about its centre (the odd extra cell goes to the high side), shifts it
// inside [0, size), and clips it only when size < k.
AF_HD void focus_grow_span(int32_t* lo, int32_t* hi, int k, int size) {
  int32_t a = *lo, b = *hi;
  const int32_t length = b - a;
  if (length < k) {
    a -= (k - length) / 2;
    b = a + k;
  }
  if (a < 0) {
    b -= a;
    a = 0;
  }
  if (b > size) {
    a -= b - size;
    b = size;
  }
  if (a < 0) a = 0;  // only when the map is smaller than k
  *lo = a;
  *hi = b;
}

// rect = [x1, y1, x2, y2) in cells of a height x width map.
AF_HD void focus_grow_rect(int32_t* rect, int k, int height, int width) {
  focus_grow_span(&rect[0], &rect[2], k, width);
  focus_grow_span(&rect[1], &rect[3], k, height);
}

// Cell j (0 <= j < area) of rect, as a linear index into a map `width` cells wide.
AF_HD int32_t focus_rect_cell(const int32_t* rect, int32_t j, int width) {
  const int32_t rect_width = rect[2] - rect[0];
  return (rect[1] + j / rect_width) * width + rect[0] + j % rect_width;
}

AF_HD int32_t focus_rect_area(const int32_t* rect) { return (rect[2] - rect[0]) * (rect[3] - rect[1]); }

// Painted rectangles a and b share a component when some of their cells are equal or 8-adjacent.
AF_HD bool focus_rects_touch(const int32_t* a, const int32_t* b) {
  return b[0] <= a[2] && a[0] <= b[2] && b[1] <= a[3] && a[1] <= b[3];
}

// ---- kMergeCheaper (step 5 of the cheaper rule), shared by the CPU path and the CUDA kernels ----

// The grown rectangle enclosing a and b, into u.
AF_HD void focus_enclose(const int32_t* a, const int32_t* b, int k, int height, int width, int32_t* u) {
  u[0] = a[0] < b[0] ? a[0] : b[0];
  u[1] = a[1] < b[1] ? a[1] : b[1];
  u[2] = a[2] > b[2] ? a[2] : b[2];
  u[3] = a[3] > b[3] ? a[3] : b[3];
  focus_grow_rect(u, k, height, width);
}

// A round's choice as one orderable key: 0 = no pair may merge; else (saving + 1) in the high word and the
// complement of the pair index p = i * count + j in the low word, so the largest key is the largest saving,
// ties to the first pair in (i, j) order. (p < count^2 < 2^32 while count <= 65535: runtime/ops/maps.py
// refuses maps that could hold more components, and the CPU and CUDA entry points check it again.)
AF_HD uint64_t focus_pair_key(int32_t saving, int64_t pair) {
  return (static_cast<uint64_t>(saving) + 1u) << 32 | (0xffffffffu - static_cast<uint32_t>(pair));
}

// The best key among the pairs p = tid, tid + threads, ... of rects [0, count) (i < j, touching, merging
// saves >= 0 cells).
AF_HD uint64_t focus_best_pair_key(const int32_t* rects, int32_t count, int k, int height, int width, int tid,
                                   int threads) {
  uint64_t best = 0;
  const int64_t pairs = static_cast<int64_t>(count) * count;
  for (int64_t p = tid; p < pairs; p += threads) {
    const int32_t i = static_cast<int32_t>(p / count), j = static_cast<int32_t>(p - static_cast<int64_t>(i) * count);
    const int32_t* a = rects + 4 * i;
    const int32_t* b = rects + 4 * j;
    if (j <= i || !focus_rects_touch(a, b)) continue;
    int32_t u[4];
    focus_enclose(a, b, k, height, width, u);
    const int32_t saving = focus_rect_area(a) + focus_rect_area(b) - focus_rect_area(u);
    if (saving < 0) continue;
    const uint64_t key = focus_pair_key(saving, p);
    if (key > best) best = key;
  }
  return best;
}

// Applies a round's key (nonzero): rect i becomes the enclosing rectangle, rect j the last one. Returns the
// new count.
AF_HD int32_t focus_apply_pair(int32_t* rects, int32_t count, uint64_t key, int k, int height, int width) {
  const int64_t pair = 0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu);
  const int32_t i = static_cast<int32_t>(pair / count), j = static_cast<int32_t>(pair % count);
  int32_t u[4];
  focus_enclose(rects + 4 * i, rects + 4 * j, k, height, width, u);
  for (int c = 0; c < 4; ++c) {
    rects[4 * i + c] = u[c];
    rects[4 * j + c] = rects[4 * (count - 1) + c];
  }
  return count - 1;
}

// Output order of the cheaper rule: (y1, x1, y2, x2), equal rectangles by index.
AF_HD bool focus_rect_before(const int32_t* rects, int32_t q, int32_t r) {
  const int32_t* a = rects + 4 * q;
  const int32_t* b = rects + 4 * r;
  if (a[1] != b[1]) return a[1] < b[1];
  if (a[0] != b[0]) return a[0] < b[0];
  if (a[3] != b[3]) return a[3] < b[3];
  if (a[2] != b[2]) return a[2] < b[2];
  return q < r;
}

// Writes rects r = tid, tid + threads, ... of [0, count) to their place in that order in `sorted`.
AF_HD void focus_write_sorted(const int32_t* rects, int32_t count, int32_t* sorted, int tid, int threads) {
  for (int32_t r = tid; r < count; r += threads) {
    int32_t rank = 0;
    for (int32_t q = 0; q < count; ++q) rank += focus_rect_before(rects, q, r);
    for (int c = 0; c < 4; ++c) sorted[4 * rank + c] = rects[4 * r + c];
  }
}

}  // namespace detail

// Step 5's rule.
enum FocusMerge : int { kMergeTouching = 0, kMergeCheaper = 1 };

// One map: prob rows are `pitch` floats apart, the map is height x width. Writes up to
// max_components(height, width) rows of [x1, y1, x2, y2) to chips, in (y1, x1) order ((y1, x1, y2, x2) with
// kMergeCheaper), and returns how many; -1 when prob holds NaN or inf. merge: a FocusMerge.
int32_t focus_chips_cpu(const float* prob, int height, int width, int pitch, float threshold, int dilation,
                        int min_size, int merge, int32_t* chips);

// A batch of maps, device pointers, one launch over the batch (one thread block per map) plus one that
// gathers the chips in batch order. probs (batch, height, width); valid_hw (batch, 2): each map's valid
// region (top-left), the rest is ignored. chips (batch * max_components(height, width), 4) and
// batch_index (same rows) receive the chips of all maps in batch order; status (2 int32): total count,
// and 1 when a valid region holds NaN or inf (then the count is 0).
void focus_chips_batched_cuda(const float* probs, const int32_t* valid_hw, int batch, int height, int width,
                              float threshold, int dilation, int min_size, int merge, int32_t* chips,
                              int32_t* batch_index, int32_t* status, std::uintptr_t stream);

}  // namespace autofocus
