// connected_components: 8-connected labelling of an (H, W) uint8 mask by union-find label equivalence
// (Playne & Hawick 2018; Komura 2015): every foreground pixel starts as its own label (its linear index),
// pixels are united with their W, NW, N and NE neighbours keeping the smaller index as the root, so each
// component's root is its first pixel in raster order; roots are then numbered 1..C in raster order.
// The CPU runs these same per-pixel functions serially; the GPU runs them one thread per pixel.
#pragma once
#include <cstdint>

#include "common.h"

namespace autofocus {

namespace detail {

constexpr int32_t kBackgroundLabel = -1;

// Root of i's tree. On the GPU other threads lower labels concurrently: read through volatile so each
// step sees the latest value (a stale one is still a valid ancestor, only slower).
AF_HD int32_t ccl_find(const int32_t* labels, int32_t i) {
#if defined(__CUDA_ARCH__)
  const volatile int32_t* l = labels;
#else
  const int32_t* l = labels;
#endif
  int32_t parent = l[i];
  while (parent != i) {
    i = parent;
    parent = l[i];
  }
  return i;
}

AF_HD int32_t atomic_min_i32(int32_t* address, int32_t value) {
#if defined(__CUDA_ARCH__)
  return atomicMin(address, value);
#else
  const int32_t old = *address;
  if (value < old) *address = value;
  return old;
#endif
}

AF_HD int32_t atomic_max_i32(int32_t* address, int32_t value) {
#if defined(__CUDA_ARCH__)
  return atomicMax(address, value);
#else
  const int32_t old = *address;
  if (value > old) *address = value;
  return old;
#endif
}

// Joins the trees of a and b under the smaller root. On the GPU the atomicMin can lose a race (the
// root it targeted was re-rooted meanwhile): then retry from the roots as they are now.
AF_HD void ccl_unite(int32_t* labels, int32_t a, int32_t b) {
  bool done = false;
  while (!done) {
    a = ccl_find(labels, a);
    b = ccl_find(labels, b);
    if (a < b) {
      const int32_t old = atomic_min_i32(&labels[b], a);
      done = (old == b);
      b = old;
    } else if (b < a) {
      const int32_t old = atomic_min_i32(&labels[a], b);
      done = (old == a);
      a = old;
    } else {
      done = true;
    }
  }
}

AF_HD void ccl_init_pixel(const uint8_t* mask, int32_t* labels, int32_t i) {
  labels[i] = mask[i] ? i : kBackgroundLabel;
}

// Unites pixel (y, x) with its already-scanned 8-neighbours W, NW, N, NE: every adjacent pair once.
AF_HD void ccl_merge_pixel(const uint8_t* mask, int32_t* labels, int width, int y, int x) {
  const int32_t i = y * width + x;
  if (!mask[i]) return;
  if (x > 0 && mask[i - 1]) ccl_unite(labels, i, i - 1);
  if (y > 0) {
    const int32_t up = i - width;
    if (x > 0 && mask[up - 1]) ccl_unite(labels, i, up - 1);
    if (mask[up]) ccl_unite(labels, i, up);
    if (x + 1 < width && mask[up + 1]) ccl_unite(labels, i, up + 1);
  }
}

// After merging: point every foreground pixel straight at its root.
AF_HD void ccl_compress_pixel(int32_t* labels, int32_t i) {
  if (labels[i] != kBackgroundLabel) labels[i] = ccl_find(labels, i);
}

AF_HD bool ccl_is_root(const int32_t* labels, int32_t i) { return labels[i] == i; }

// Box [x1, y1, x2, y2) of one component, grown to hold (x, y); start from box_empty().
AF_HD void box_include(int32_t* box, int x, int y) {
  atomic_min_i32(&box[0], x);
  atomic_min_i32(&box[1], y);
  atomic_max_i32(&box[2], x + 1);
  atomic_max_i32(&box[3], y + 1);
}

AF_HD void box_empty(int32_t* box) {
  box[0] = INT32_MAX;
  box[1] = INT32_MAX;
  box[2] = INT32_MIN;
  box[3] = INT32_MIN;
}

// Components of an h x w map with 8-connectivity: at most one per 2 x 2 block.
AF_HD int64_t max_components(int64_t height, int64_t width) {
  return ((height + 1) / 2) * ((width + 1) / 2);
}

}  // namespace detail

// mask: (height, width) uint8; labels: (height, width) int32 output (0 background, 1..C in raster order of
// each component's first pixel); boxes: room for max_components rows of [x1, y1, x2, y2). Returns C.
int32_t connected_components_cpu(const uint8_t* mask, int height, int width, int32_t* labels, int32_t* boxes);

// Device pointers; `count` (one int32, device) receives C; boxes must hold max_components rows.
void connected_components_cuda(const uint8_t* mask, int height, int width, int32_t* labels, int32_t* boxes,
                               int32_t* count, std::uintptr_t stream);

}  // namespace autofocus
