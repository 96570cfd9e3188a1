// focus_chips_block: Algorithm 1 (focus_chips.h) as one thread block per map, every array in shared memory.
// The same result as focus_chips_cpu, by a different structure:
//   1-2. threshold and dilate (the shared bodies of dilate.h);
//   3.   8-connected labelling by block-wide union-find (Playne & Hawick 2018, ccl_unite of
//        connected_components.h; each pixel unites with N, else W or NW, and NE: the others are joined
//        through N or W), roots numbered in raster order by a block scan, boxes by atomicMin/Max per root
//        (only run ends and bottom pixels contribute, so no address sees more than a row or column of atomics);
//   4.   grow (focus_grow_rect);
//   5.   merge on the RECTANGLES instead of repainting the map: two painted rectangles belong to one component
//        of the painted mask exactly when a chain of them touches (8-adjacent or overlapping cells), so each
//        round unites touching pairs (union-find on rectangle indices), takes each group's enclosing box and
//        grows it; a round with no touching pair ends the loop (the C++ loop stops there too: its count
//        does not change, and growing a grown rectangle is the identity);
//   6.   the final rectangles no longer touch, so each one's top-left cell is its component's first pixel:
//        marking those cells and numbering them by a block scan gives the (y1, x1) order of focus_chips_cpu.
// Each step is a per-thread body (thread `tid` of `threads`); the CUDA kernel runs each step on every thread
// with __syncthreads() between steps, the CPU build (focus_chips_block_cpu) runs the same bodies for tid =
// 0..threads-1 in turn, so the tests here check the logic the GPU runs.
#pragma once
#include <cstdint>

#include "common.h"
#include "ops/connected_components.h"
#include "ops/dilate.h"
#include "ops/focus_chips.h"

namespace autofocus {

namespace detail {

constexpr int kFocusBlockThreads = 1024;

// Shared-memory layout of one map: `boxes` (4 * capacity int32) then one work area reused by the steps
// (labels int32[n] + two uint8[n] masks in step 1-4; parent int32[capacity] + next int32[4 * capacity] in
// step 5; owner int32[n] in step 6). capacity = max_components(height, width), enough for any step.
AF_HD int64_t focus_block_work_bytes(int64_t height, int64_t width) {
  const int64_t n = height * width, capacity = max_components(height, width);
  const int64_t work = 6 * n > 20 * capacity ? 6 * n : 20 * capacity;
  return (work + 15) / 16 * 16;
}
AF_HD int64_t focus_block_bytes(int64_t height, int64_t width) {
  return 16 * max_components(height, width) + focus_block_work_bytes(height, width);
}

struct FocusBlock {
  int h, w;           // the valid region; arrays have h * w cells, rows w apart
  int32_t* boxes;     // [x1, y1, x2, y2) per component / rectangle
  int32_t* labels;    // step 3: per pixel -1, a parent index, or -(rank + 2) at a numbered root
  uint8_t* mask;      // thresholded, then dilated
  uint8_t* other;     // the dilation's intermediate
  int32_t* parent;    // step 5: per rectangle a parent index, or -(rank + 2) at a numbered root
  int32_t* next;      // step 5: the groups' enclosing boxes
  int32_t* owner;     // step 6: per cell, the rectangle whose top-left cell it is, or -1
};

AF_HD FocusBlock focus_block_layout(void* memory, int h, int w, int64_t capacity) {
  FocusBlock s;
  s.h = h;
  s.w = w;
  const int64_t n = static_cast<int64_t>(h) * w;
  s.boxes = static_cast<int32_t*>(memory);
  int32_t* work = s.boxes + 4 * capacity;
  s.labels = work;
  s.mask = reinterpret_cast<uint8_t*>(work + n);
  s.other = s.mask + n;
  s.parent = work;
  s.next = work + capacity;
  s.owner = work;
  return s;
}

// The cells [first, last) of thread tid's contiguous chunk of `length` items (the numbering steps).
AF_HD void focus_chunk(int32_t length, int tid, int threads, int32_t* first, int32_t* last) {
  const int32_t size = (length + threads - 1) / threads;
  const int32_t a = tid * size, b = a + size;
  *first = a < length ? a : length;
  *last = b < length ? b : length;
}

// The rank of item i from an array where numbered roots hold -(rank + 2) and other items their root's index.
AF_HD int32_t focus_rank_of(const int32_t* encoded, int32_t i) {
  const int32_t v = encoded[i];
  return v < -1 ? -v - 2 : -encoded[v] - 2;
}

// Step 1: prob rows are `pitch` floats apart. Sets *on when a cell passes, *bad on NaN/inf.
AF_HD void focus_block_threshold(const FocusBlock& s, const float* prob, int pitch, float threshold, int tid,
                                 int threads, bool* on, bool* bad) {
  const int32_t n = s.h * s.w;
  for (int32_t i = tid; i < n; i += threads) {
    const float p = prob[static_cast<int64_t>(i / s.w) * pitch + i % s.w];
    if (!focus_is_finite(p)) *bad = true;
    s.mask[i] = p >= threshold;
    if (p >= threshold) *on = true;
  }
}

// Step 2, rows (mask -> other) then columns (other -> mask).
AF_HD void focus_block_dilate_rows(const FocusBlock& s, int r, int tid, int threads) {
  for (int32_t i = tid, n = s.h * s.w; i < n; i += threads)
    s.other[i] = dilate_row_any(s.mask + (i / s.w) * s.w, s.w, i % s.w, r);
}
AF_HD void focus_block_dilate_cols(const FocusBlock& s, int r, int tid, int threads) {
  for (int32_t i = tid, n = s.h * s.w; i < n; i += threads)
    s.mask[i] = dilate_col_any(s.other, s.h, s.w, i / s.w, i % s.w, r);
}

// Step 3: labelling.
AF_HD void focus_block_label_init(const FocusBlock& s, int tid, int threads) {
  for (int32_t i = tid, n = s.h * s.w; i < n; i += threads) ccl_init_pixel(s.mask, s.labels, i);
}

// Unites pixel i with N when N is on (NW and NE are joined to N by their own W step), else with W or
// (when W is off) NW, and with NE: every 8-adjacency is covered, with fewer atomics than all four.
AF_HD void focus_block_label_merge(const FocusBlock& s, int tid, int threads) {
  const int w = s.w;
  for (int32_t i = tid, n = s.h * w; i < n; i += threads) {
    if (!s.mask[i]) continue;
    const int y = i / w, x = i % w;
    if (y > 0 && s.mask[i - w]) {
      ccl_unite(s.labels, i, i - w);
      continue;
    }
    if (x > 0 && s.mask[i - 1])
      ccl_unite(s.labels, i, i - 1);
    else if (x > 0 && y > 0 && s.mask[i - w - 1])
      ccl_unite(s.labels, i, i - w - 1);
    if (x + 1 < w && y > 0 && s.mask[i - w + 1]) ccl_unite(s.labels, i, i - w + 1);
  }
}

AF_HD void focus_block_label_compress(const FocusBlock& s, int tid, int threads) {
  for (int32_t i = tid, n = s.h * s.w; i < n; i += threads) ccl_compress_pixel(s.labels, i);
}

// Roots (label == own index) in thread tid's chunk of the pixels.
AF_HD int32_t focus_block_count_pixel_roots(const FocusBlock& s, int tid, int threads) {
  int32_t first, last, count = 0;
  focus_chunk(s.h * s.w, tid, threads, &first, &last);
  for (int32_t i = first; i < last; ++i) count += ccl_is_root(s.labels, i);
  return count;
}

// Numbers the chunk's roots from `rank` on (raster order over the block) and starts each one's box: the
// root is the component's first pixel (the smallest index wins every union), so y1 is its row.
AF_HD void focus_block_number_pixel_roots(const FocusBlock& s, int32_t rank, int tid, int threads) {
  int32_t first, last;
  focus_chunk(s.h * s.w, tid, threads, &first, &last);
  for (int32_t i = first; i < last; ++i) {
    if (!ccl_is_root(s.labels, i)) continue;
    int32_t* box = s.boxes + 4 * rank;
    box[0] = INT32_MAX;
    box[1] = i / s.w;
    box[2] = INT32_MIN;
    box[3] = INT32_MIN;
    s.labels[i] = -(rank + 2);
    ++rank;
  }
}

// Boxes: x1 from the first pixel of each run, x2 from the last, y2 from pixels with nothing below.
AF_HD void focus_block_pixel_boxes(const FocusBlock& s, int tid, int threads) {
  const int w = s.w, h = s.h;
  for (int32_t i = tid, n = h * w; i < n; i += threads) {
    if (s.labels[i] == kBackgroundLabel) continue;
    const int y = i / w, x = i % w;
    int32_t* box = s.boxes + 4 * focus_rank_of(s.labels, i);
    if (x == 0 || !s.mask[i - 1]) atomic_min_i32(&box[0], x);
    if (x + 1 == w || !s.mask[i + 1]) atomic_max_i32(&box[2], x + 1);
    if (y + 1 == h || !s.mask[i + w]) atomic_max_i32(&box[3], y + 1);
  }
}

// Step 4 on boxes [0, count).
AF_HD void focus_block_grow(const FocusBlock& s, int32_t count, int min_size, int tid, int threads) {
  for (int32_t r = tid; r < count; r += threads) focus_grow_rect(s.boxes + 4 * r, min_size, s.h, s.w);
}

// Step 5 (kMergeTouching).
AF_HD void focus_block_rect_init(const FocusBlock& s, int32_t count, int tid, int threads) {
  for (int32_t r = tid; r < count; r += threads) s.parent[r] = r;
}

// Unites every touching pair (i < j) of boxes [0, count); true when this thread saw one.
AF_HD bool focus_block_rect_merge(const FocusBlock& s, int32_t count, int tid, int threads) {
  bool touched = false;
  const int64_t pairs = static_cast<int64_t>(count) * count;
  for (int64_t p = tid; p < pairs; p += threads) {
    const int32_t i = static_cast<int32_t>(p / count), j = static_cast<int32_t>(p - static_cast<int64_t>(i) * count);
    if (j <= i || !focus_rects_touch(s.boxes + 4 * i, s.boxes + 4 * j)) continue;
    touched = true;
    ccl_unite(s.parent, i, j);
  }
  return touched;
}

AF_HD void focus_block_rect_compress(const FocusBlock& s, int32_t count, int tid, int threads) {
  for (int32_t r = tid; r < count; r += threads) s.parent[r] = ccl_find(s.parent, r);
}

AF_HD int32_t focus_block_count_rect_roots(const FocusBlock& s, int32_t count, int tid, int threads) {
  int32_t first, last, roots = 0;
  focus_chunk(count, tid, threads, &first, &last);
  for (int32_t r = first; r < last; ++r) roots += s.parent[r] == r;
  return roots;
}

AF_HD void focus_block_number_rect_roots(const FocusBlock& s, int32_t count, int32_t rank, int tid, int threads) {
  int32_t first, last;
  focus_chunk(count, tid, threads, &first, &last);
  for (int32_t r = first; r < last; ++r) {
    if (s.parent[r] != r) continue;
    box_empty(s.next + 4 * rank);
    s.parent[r] = -(rank + 2);
    ++rank;
  }
}

// Each group's enclosing box, into next.
AF_HD void focus_block_rect_union(const FocusBlock& s, int32_t count, int tid, int threads) {
  for (int32_t r = tid; r < count; r += threads) {
    int32_t* group = s.next + 4 * focus_rank_of(s.parent, r);
    const int32_t* box = s.boxes + 4 * r;
    atomic_min_i32(&group[0], box[0]);
    atomic_min_i32(&group[1], box[1]);
    atomic_max_i32(&group[2], box[2]);
    atomic_max_i32(&group[3], box[3]);
  }
}

// The grown group boxes [0, groups) become the boxes of the next round.
AF_HD void focus_block_rect_grow(const FocusBlock& s, int32_t groups, int min_size, int tid, int threads) {
  for (int32_t r = tid; r < groups; r += threads) {
    int32_t* box = s.boxes + 4 * r;
    for (int c = 0; c < 4; ++c) box[c] = s.next[4 * r + c];
    focus_grow_rect(box, min_size, s.h, s.w);
  }
}

// Step 6: mark each final rectangle's top-left cell.
AF_HD void focus_block_owner_clear(const FocusBlock& s, int tid, int threads) {
  for (int32_t i = tid, n = s.h * s.w; i < n; i += threads) s.owner[i] = -1;
}
AF_HD void focus_block_owner_mark(const FocusBlock& s, int32_t count, int tid, int threads) {
  for (int32_t r = tid; r < count; r += threads) s.owner[s.boxes[4 * r + 1] * s.w + s.boxes[4 * r]] = r;
}
AF_HD int32_t focus_block_count_owners(const FocusBlock& s, int tid, int threads) {
  int32_t first, last, count = 0;
  focus_chunk(s.h * s.w, tid, threads, &first, &last);
  for (int32_t i = first; i < last; ++i) count += s.owner[i] >= 0;
  return count;
}
// Writes the chunk's rectangles to chips[rank ...] in raster order of their top-left cells.
AF_HD void focus_block_write_chips(const FocusBlock& s, int32_t rank, int32_t* chips, int tid, int threads) {
  int32_t first, last;
  focus_chunk(s.h * s.w, tid, threads, &first, &last);
  for (int32_t i = first; i < last; ++i) {
    const int32_t r = s.owner[i];
    if (r < 0) continue;
    for (int c = 0; c < 4; ++c) chips[4 * rank + c] = s.boxes[4 * r + c];
    ++rank;
  }
}

}  // namespace detail

// The block algorithm run on the CPU, thread by thread (same arguments and result as focus_chips_cpu):
// the tests' handle on the CUDA kernel's logic.
int32_t focus_chips_block_cpu(const float* prob, int height, int width, int pitch, float threshold, int dilation,
                              int min_size, int merge, int32_t* chips);

}  // namespace autofocus
