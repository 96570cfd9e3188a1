// The CUDA block kernel's Algorithm 1 (focus_chips_block.h) on the CPU: the same per-thread bodies, run for
// tid = 0..kFocusBlockThreads-1 in turn where the kernel runs them at once (each loop over tid below is
// one step between two __syncthreads() of the kernel), and the block scans done serially. Not the fast
// CPU path (focus_chips_cpu is); the tests' check of the GPU's logic.
#include <vector>

#include "ops/focus_chips_block.h"

namespace autofocus {

namespace {

constexpr int kThreads = detail::kFocusBlockThreads;

// Exclusive scan of the per-thread counts in place (the kernel's block_exclusive_scan); returns the total.
int32_t exclusive_scan(std::vector<int32_t>& counts) {
  int32_t total = 0;
  for (int32_t& c : counts) {
    const int32_t v = c;
    c = total;
    total += v;
  }
  return total;
}

}  // namespace

int32_t focus_chips_block_cpu(const float* prob, int height, int width, int pitch, float threshold, int dilation,
                              int min_size, int merge, int32_t* chips) {
  check_arg(merge == kMergeTouching || merge == kMergeCheaper, "merge: expected kMergeTouching or kMergeCheaper");
  check_arg(dilation >= 1 && dilation % 2 == 1, "dilation: expected an odd size >= 1");
  check_arg(min_size >= 1, "min_size: expected >= 1");
  const int64_t capacity = detail::max_components(height, width);
  std::vector<int32_t> memory(detail::focus_block_bytes(height, width) / 4 + 1);  // the "shared memory"
  const detail::FocusBlock s = detail::focus_block_layout(memory.data(), height, width, capacity);
  std::vector<int32_t> counts(kThreads);
  const auto each_thread = [](auto&& body) {
    for (int tid = 0; tid < kThreads; ++tid) body(tid);
  };

  bool on = false, bad = false;
  each_thread([&](int t) { detail::focus_block_threshold(s, prob, pitch, threshold, t, kThreads, &on, &bad); });
  if (bad) return -1;
  if (!on) return 0;
  const int r = dilation / 2;
  each_thread([&](int t) { detail::focus_block_dilate_rows(s, r, t, kThreads); });
  each_thread([&](int t) { detail::focus_block_dilate_cols(s, r, t, kThreads); });
  each_thread([&](int t) { detail::focus_block_label_init(s, t, kThreads); });
  each_thread([&](int t) { detail::focus_block_label_merge(s, t, kThreads); });
  each_thread([&](int t) { detail::focus_block_label_compress(s, t, kThreads); });
  each_thread([&](int t) { counts[t] = detail::focus_block_count_pixel_roots(s, t, kThreads); });
  int32_t count = exclusive_scan(counts);
  each_thread([&](int t) { detail::focus_block_number_pixel_roots(s, counts[t], t, kThreads); });
  each_thread([&](int t) { detail::focus_block_pixel_boxes(s, t, kThreads); });
  each_thread([&](int t) { detail::focus_block_grow(s, count, min_size, t, kThreads); });
  if (merge == kMergeCheaper) {
    check_arg(count <= 65535, "merge cheaper: more than 65535 components in one map");
    while (true) {  // a round: each thread's best pair, the block's maximum, one thread merges it
      uint64_t key = 0;
      each_thread([&](int t) {
        const uint64_t mine = detail::focus_best_pair_key(s.boxes, count, min_size, height, width, t, kThreads);
        if (mine > key) key = mine;
      });
      if (key == 0) break;
      count = detail::focus_apply_pair(s.boxes, count, key, min_size, height, width);
    }
    each_thread([&](int t) { detail::focus_write_sorted(s.boxes, count, chips, t, kThreads); });
    return count;
  }
  while (true) {
    each_thread([&](int t) { detail::focus_block_rect_init(s, count, t, kThreads); });
    bool touched = false;
    each_thread([&](int t) { touched |= detail::focus_block_rect_merge(s, count, t, kThreads); });
    if (!touched) break;
    each_thread([&](int t) { detail::focus_block_rect_compress(s, count, t, kThreads); });
    each_thread([&](int t) { counts[t] = detail::focus_block_count_rect_roots(s, count, t, kThreads); });
    const int32_t groups = exclusive_scan(counts);
    each_thread([&](int t) { detail::focus_block_number_rect_roots(s, count, counts[t], t, kThreads); });
    each_thread([&](int t) { detail::focus_block_rect_union(s, count, t, kThreads); });
    each_thread([&](int t) { detail::focus_block_rect_grow(s, groups, min_size, t, kThreads); });
    count = groups;
  }
  each_thread([&](int t) { detail::focus_block_owner_clear(s, t, kThreads); });
  each_thread([&](int t) { detail::focus_block_owner_mark(s, count, t, kThreads); });
  each_thread([&](int t) { counts[t] = detail::focus_block_count_owners(s, t, kThreads); });
  exclusive_scan(counts);
  each_thread([&](int t) { detail::focus_block_write_chips(s, counts[t], chips, t, kThreads); });
  return count;
}

}  // namespace autofocus
