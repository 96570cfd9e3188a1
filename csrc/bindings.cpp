// The only file that includes pybind11: one m.def per op. CPU entry points take NumPy arrays (checked
// for dtype and layout by runtime/ops/, converted to raw pointers here); CUDA entry points take device
// pointers as integers plus the CUDA stream, so the extension never links libtorch.
#include <algorithm>
#include <initializer_list>
#include <string>
#include <utility>
#include <optional>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>

#include "common.h"
#ifdef WITH_CUDA
#include "device_guard.h"
#endif
#include "ops/connected_components.h"
#include "ops/crop_resize.h"
#include "ops/dilate.h"
#include "ops/focus_chips.h"
#include "ops/focus_chips_block.h"
#include "ops/decode.h"
#include "ops/nms.h"
#include "ops/paint_boxes.h"
#include "ops/soft_nms.h"
#include "ops/soft_nms_components.h"
#include "ops/stack_prune.h"
#include "ops/top_k.h"

namespace py = pybind11;

namespace {
// Sizes and counts handed to a binding: >= 0 (a negative one would index memory before a buffer).
void check_sizes(std::initializer_list<std::pair<const char*, int64_t>> sizes) {
  for (const auto& [name, value] : sizes)
    autofocus::check_arg(value >= 0, std::string(name) + ": expected >= 0, got " + std::to_string(value));
}
// A CPU array's leading dimension must match the count the call works on (the kernels read that many).
void check_rows(const char* name, const py::array& a, int64_t rows, int64_t ndim, int64_t last = -1) {
  autofocus::check_arg(a.ndim() == ndim && a.shape(0) == rows && (last < 0 || a.shape(ndim - 1) == last),
                       std::string(name) + ": expected " + std::to_string(ndim) + " dimensions, " +
                           std::to_string(rows) + " rows" + (last < 0 ? "" : " of " + std::to_string(last)));
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "autofocus post-processing ops (C++ CPU and CUDA); use runtime.ops, not this module";
  m.def("with_cuda", []() {
#ifdef WITH_CUDA
    return true;
#else
    return false;
#endif
  });

  // ---- map ops: dilate, connected_components, focus_chips, crop_resize ----
  {
    using u8_array = py::array_t<uint8_t, py::array::c_style>;
    using f32_array = py::array_t<float, py::array::c_style>;
    using i32_array = py::array_t<int32_t, py::array::c_style>;
    // (p / 255 - mean) / std = p * gain + bias, in double then rounded once.
    auto make_norm = [](const std::array<double, 3>& mean, const std::array<double, 3>& stdev, bool bgr_to_rgb) {
      autofocus::detail::CropNorm norm{};
      for (int c = 0; c < 3; ++c) {
        autofocus::check_arg(stdev[c] > 0, "std: expected positive values");
        norm.gain[c] = static_cast<float>(1.0 / (255.0 * stdev[c]));
        norm.bias[c] = static_cast<float>(-mean[c] / stdev[c]);
        norm.source_channel[c] = bgr_to_rgb ? 2 - c : c;
      }
      return norm;
    };

    m.def("dilate_cpu", [](u8_array mask, int d) {
      autofocus::check_arg(mask.ndim() == 2, "mask: expected 2 dimensions");
      const int height = static_cast<int>(mask.shape(0)), width = static_cast<int>(mask.shape(1));
      u8_array out({height, width});
      const uint8_t* in = mask.data();
      uint8_t* dst = out.mutable_data();
      py::gil_scoped_release release;
      autofocus::dilate_cpu(in, height, width, d, dst);
      return out;
    }, py::arg("mask"), py::arg("d"));

    m.def("connected_components_cpu", [](u8_array mask) {
      autofocus::check_arg(mask.ndim() == 2, "mask: expected 2 dimensions");
      const int height = static_cast<int>(mask.shape(0)), width = static_cast<int>(mask.shape(1));
      i32_array labels({height, width});
      std::vector<int32_t> boxes(4 * autofocus::detail::max_components(height, width));
      int32_t count;
      {
        py::gil_scoped_release release;
        count = autofocus::connected_components_cpu(mask.data(), height, width, labels.mutable_data(), boxes.data());
      }
      i32_array out_boxes({static_cast<py::ssize_t>(count), py::ssize_t{4}});
      std::copy(boxes.begin(), boxes.begin() + 4 * count, out_boxes.mutable_data());
      return py::make_tuple(labels, out_boxes);
    }, py::arg("mask"));

    // Returns (chips (M, 4) int32, batch_index (M,) int32, index of the first map holding NaN/inf or -1).
    using FocusChipsFn = int32_t (*)(const float*, int, int, int, float, int, int, int, int32_t*);
    const auto focus_chips_batched = [](FocusChipsFn focus_chips) {
      return [focus_chips](f32_array probs, i32_array valid_hw, float threshold, int dilation, int min_size,
                            int merge) {
        autofocus::check_arg(probs.ndim() == 3, "probs: expected 3 dimensions");
        autofocus::check_arg(valid_hw.ndim() == 2 && valid_hw.shape(0) == probs.shape(0) && valid_hw.shape(1) == 2,
                             "valid_hw: expected shape (batch, 2)");
        autofocus::check_arg(dilation >= 1 && dilation % 2 == 1, "dilation: expected an odd size >= 1");
        autofocus::check_arg(min_size >= 1, "min_size: expected >= 1");
        const int batch = static_cast<int>(probs.shape(0));
        const int height = static_cast<int>(probs.shape(1)), width = static_cast<int>(probs.shape(2));
        const float* maps = probs.data();
        const int32_t* sizes = valid_hw.data();
        std::vector<int32_t> chips, batch_index, rects(4 * autofocus::detail::max_components(height, width));
        int bad_map = -1;
        {
          py::gil_scoped_release release;
          for (int b = 0; b < batch && bad_map < 0; ++b) {
            const int h = sizes[2 * b], w = sizes[2 * b + 1];
            autofocus::check_arg(h >= 0 && h <= height && w >= 0 && w <= width,
                                 "valid_hw: each (h, w) must lie within the map's (height, width)");
            const int32_t count = focus_chips(maps + static_cast<int64_t>(b) * height * width, h, w, width, threshold,
                                              dilation, min_size, merge, rects.data());
            if (count < 0) {
              bad_map = b;
              break;
            }
            chips.insert(chips.end(), rects.begin(), rects.begin() + 4 * count);
            batch_index.insert(batch_index.end(), count, b);
          }
        }
        const py::ssize_t count = static_cast<py::ssize_t>(batch_index.size());
        i32_array out_chips({count, py::ssize_t{4}}), out_index(count);
        std::copy(chips.begin(), chips.end(), out_chips.mutable_data());
        std::copy(batch_index.begin(), batch_index.end(), out_index.mutable_data());
        return py::make_tuple(out_chips, out_index, bad_map);
      };
    };
    m.def("focus_chips_batched_cpu", focus_chips_batched(&autofocus::focus_chips_cpu), py::arg("probs"),
          py::arg("valid_hw"), py::arg("threshold"), py::arg("dilation"), py::arg("min_size"), py::arg("merge"));
    // The CUDA block kernel's algorithm run thread by thread on the CPU (tests only; same signature).
    m.def("focus_chips_block_cpu", focus_chips_batched(&autofocus::focus_chips_block_cpu), py::arg("probs"),
          py::arg("valid_hw"), py::arg("threshold"), py::arg("dilation"), py::arg("min_size"), py::arg("merge"));

    m.def("crop_resize_cpu", [make_norm](u8_array image, f32_array chips, f32_array scales, i32_array out_sizes,
                                         int out_height, int out_width, std::array<double, 3> mean,
                                         std::array<double, 3> stdev, bool bgr_to_rgb) {
      autofocus::check_arg(image.ndim() == 3 && image.shape(2) == 3, "image: expected shape (H, W, 3)");
      autofocus::check_arg(chips.ndim() == 2 && chips.shape(1) == 4, "chips: expected shape (M, 4)");
      const py::ssize_t count = chips.shape(0);
      autofocus::check_arg(scales.ndim() == 1 && scales.shape(0) == count, "scales: expected shape (M,)");
      autofocus::check_arg(out_sizes.ndim() == 2 && out_sizes.shape(0) == count && out_sizes.shape(1) == 2,
                           "out_sizes: expected shape (M, 2)");
      autofocus::check_arg(out_height >= 0 && out_width >= 0, "out_hw: expected sizes >= 0");
      const autofocus::detail::CropNorm norm = make_norm(mean, stdev, bgr_to_rgb);
      f32_array out({count, py::ssize_t{3}, static_cast<py::ssize_t>(out_height), static_cast<py::ssize_t>(out_width)});
      const uint8_t* pixels = image.data();
      const float *boxes = chips.data(), *factors = scales.data();
      const int32_t* sizes = out_sizes.data();
      float* dst = out.mutable_data();
      const int height = static_cast<int>(image.shape(0)), width = static_cast<int>(image.shape(1));
      py::gil_scoped_release release;
      autofocus::crop_resize_cpu(pixels, height, width, boxes, factors, sizes, static_cast<int>(count), out_height,
                                 out_width, norm, dst);
      return out;
    }, py::arg("image"), py::arg("chips"), py::arg("scales"), py::arg("out_sizes"), py::arg("out_height"),
       py::arg("out_width"), py::arg("mean"), py::arg("std"), py::arg("bgr_to_rgb"));

#ifdef WITH_CUDA
    // Device pointers as integers, the stream as an integer (torch.cuda.current_stream().cuda_stream).
    m.def("dilate_cuda", [](std::uintptr_t mask, int height, int width, int d, std::uintptr_t out,
                            std::uintptr_t stream) {
      check_sizes({{"height", height}, {"width", width}});
      autofocus::DeviceGuard guard({{"mask", mask}, {"out", out}}, stream);
      autofocus::dilate_cuda(reinterpret_cast<const uint8_t*>(mask), height, width, d,
                             reinterpret_cast<uint8_t*>(out), stream);
    });
    m.def("connected_components_cuda", [](std::uintptr_t mask, int height, int width, std::uintptr_t labels,
                                          std::uintptr_t boxes, std::uintptr_t count, std::uintptr_t stream) {
      check_sizes({{"height", height}, {"width", width}});
      autofocus::DeviceGuard guard({{"mask", mask}, {"labels", labels}, {"boxes", boxes}, {"count", count}}, stream);
      autofocus::connected_components_cuda(reinterpret_cast<const uint8_t*>(mask), height, width,
                                           reinterpret_cast<int32_t*>(labels), reinterpret_cast<int32_t*>(boxes),
                                           reinterpret_cast<int32_t*>(count), stream);
    });
    m.def("focus_chips_batched_cuda", [](std::uintptr_t probs, std::uintptr_t valid_hw, int batch, int height,
                                         int width, float threshold, int dilation, int min_size, int merge,
                                         std::uintptr_t chips, std::uintptr_t batch_index, std::uintptr_t status,
                                         std::uintptr_t stream) {
      check_sizes({{"batch", batch}, {"height", height}, {"width", width}});
      autofocus::DeviceGuard guard({{"probs", probs}, {"valid_hw", valid_hw}, {"chips", chips}, {"batch_index", batch_index}, {"status", status}}, stream);
      autofocus::focus_chips_batched_cuda(reinterpret_cast<const float*>(probs),
                                          reinterpret_cast<const int32_t*>(valid_hw), batch, height, width,
                                          threshold, dilation, min_size, merge, reinterpret_cast<int32_t*>(chips),
                                          reinterpret_cast<int32_t*>(batch_index),
                                          reinterpret_cast<int32_t*>(status), stream);
    });
    m.def("crop_resize_cuda", [make_norm](std::uintptr_t image, int height, int width, std::uintptr_t chips,
                                          std::uintptr_t scales, std::uintptr_t out_sizes, int count,
                                          int out_height, int out_width, std::array<double, 3> mean,
                                          std::array<double, 3> stdev, bool bgr_to_rgb, bool half,
                                          std::uintptr_t out, std::uintptr_t stream) {
      check_sizes({{"height", height}, {"width", width}, {"count", count}, {"out_height", out_height}, {"out_width", out_width}});
      autofocus::DeviceGuard guard({{"image", image}, {"chips", chips}, {"scales", scales}, {"out_sizes", out_sizes}, {"out", out}}, stream);
      autofocus::crop_resize_cuda(reinterpret_cast<const uint8_t*>(image), height, width,
                                  reinterpret_cast<const float*>(chips), reinterpret_cast<const float*>(scales),
                                  reinterpret_cast<const int32_t*>(out_sizes), count, out_height, out_width,
                                  make_norm(mean, stdev, bgr_to_rgb), half, reinterpret_cast<void*>(out), stream);
    });
    m.def("crop_resize_images_cuda", [make_norm](std::uintptr_t images, std::uintptr_t params, int count,
                                                 int out_height, int out_width, std::array<double, 3> mean,
                                                 std::array<double, 3> stdev, bool bgr_to_rgb, std::uintptr_t out,
                                                 std::uintptr_t stream) {
      check_sizes({{"count", count}, {"out_height", out_height}, {"out_width", out_width}});
      autofocus::DeviceGuard guard({{"images", images}, {"params", params}, {"out", out}}, stream);
      autofocus::crop_resize_images_cuda(reinterpret_cast<const uint64_t*>(images),
                                         reinterpret_cast<const float*>(params), count, out_height, out_width,
                                         make_norm(mean, stdev, bgr_to_rgb), reinterpret_cast<float*>(out), stream);
    });
#endif
  }

  // ---- box ops: decode, nms, soft_nms, stack_prune, top_k ----
  // CPU: C-contiguous arrays of the right dtype (checked in runtime/ops/; pybind11 refuses others
  // instead of converting). Data-dependent sizes: computed into full-size buffers, returned trimmed.
  using F32 = py::array_t<float, py::array::c_style>;
  using I64 = py::array_t<int64_t, py::array::c_style>;
  const auto labels_ptr = [](const std::optional<I64>& labels) -> const int64_t* {
    return labels ? labels->data() : nullptr;
  };
  m.def("decode_cpu", [](F32 scores, F32 ltrb, float stride, double score_threshold, int64_t max_candidates,
                         F32 scales, F32 offsets) {
    autofocus::check_arg(scores.ndim() == 4, "scores: expected 4 dimensions (N, C, H, W)");
    const int64_t n = scores.shape(0), c = scores.shape(1), h = scores.shape(2), w = scores.shape(3);
    autofocus::check_arg(ltrb.ndim() == 4 && ltrb.shape(0) == n && ltrb.shape(1) == 4 && ltrb.shape(2) == h &&
                             ltrb.shape(3) == w, "ltrb: expected shape (N, 4, H, W) of scores' N, H, W");
    check_rows("scales", scales, n, 1);
    check_rows("offsets", offsets, n, 2, 2);
    check_sizes({{"max_candidates", max_candidates}});
    const int64_t cap = autofocus::decode_capacity(n, c, h, w, max_candidates);
    std::vector<float> boxes(4 * cap), out_scores(cap);
    std::vector<int32_t> labels(cap), batch(cap);
    int64_t k;
    {
      py::gil_scoped_release release;
      k = autofocus::decode_cpu(scores.data(), ltrb.data(), n, c, h, w, stride, score_threshold, max_candidates,
                                scales.data(), offsets.data(), boxes.data(), out_scores.data(), labels.data(),
                                batch.data());
    }
    return py::make_tuple(py::array_t<float>({k, int64_t(4)}, boxes.data()), py::array_t<float>(k, out_scores.data()),
                          py::array_t<int32_t>(k, labels.data()), py::array_t<int32_t>(k, batch.data()));
  });
  m.def("nms_cpu", [labels_ptr](F32 boxes, F32 scores, float iou_threshold, std::optional<I64> labels) {
    const int64_t n = scores.shape(0);
    check_rows("scores", scores, n, 1);
    check_rows("boxes", boxes, n, 2, 4);
    if (labels) check_rows("labels", *labels, n, 1);
    std::vector<int64_t> keep(n);
    int64_t k;
    {
      py::gil_scoped_release release;
      k = autofocus::nms_cpu(boxes.data(), scores.data(), labels_ptr(labels), n, iou_threshold, keep.data());
    }
    return py::array_t<int64_t>(k, keep.data());
  });
  m.def("soft_nms_cpu", [labels_ptr](F32 boxes, F32 scores, std::optional<I64> labels, int method, float sigma,
                                     float iou_threshold, float score_threshold, int64_t max_output) {
    const int64_t n = scores.shape(0);
    check_rows("scores", scores, n, 1);
    check_rows("boxes", boxes, n, 2, 4);
    if (labels) check_rows("labels", *labels, n, 1);
    std::vector<int64_t> keep(n);
    std::vector<float> out_scores(n);
    int64_t k;
    {
      py::gil_scoped_release release;
      k = autofocus::soft_nms_cpu(boxes.data(), scores.data(), labels_ptr(labels), n, method, sigma, iou_threshold,
                                  score_threshold, max_output, keep.data(), out_scores.data());
    }
    return py::make_tuple(py::array_t<int64_t>(k, keep.data()), py::array_t<float>(k, out_scores.data()));
  });
  // The CUDA component kernel's algorithm run serially on the CPU (tests only; at most 2,048 boxes).
  m.def("soft_nms_components_cpu", [labels_ptr](F32 boxes, F32 scores, std::optional<I64> labels, int method,
                                                float sigma, float iou_threshold, float score_threshold,
                                                int64_t max_output) {
    const int64_t n = scores.shape(0);
    std::vector<int64_t> keep(n);
    std::vector<float> out_scores(n);
    int64_t k;
    {
      py::gil_scoped_release release;
      k = autofocus::soft_nms_components_cpu(boxes.data(), scores.data(), labels_ptr(labels), n, method, sigma,
                                             iou_threshold, score_threshold, max_output, keep.data(),
                                             out_scores.data());
    }
    return py::make_tuple(py::array_t<int64_t>(k, keep.data()), py::array_t<float>(k, out_scores.data()));
  });
  m.def("soft_nms_segments_cpu", [labels_ptr](F32 boxes, F32 scores, std::optional<I64> labels, I64 offsets, int method,
                                              float sigma, float iou_threshold, float score_threshold,
                                              int64_t max_output) {
    const int64_t n = scores.shape(0), segments = offsets.shape(0) - 1;
    check_rows("scores", scores, n, 1);
    check_rows("boxes", boxes, n, 2, 4);
    if (labels) check_rows("labels", *labels, n, 1);
    autofocus::check_arg(offsets.ndim() == 1 && segments >= 0, "offsets: expected shape (segments + 1,)");
    {  // the segments' bounds are read as indices into boxes
      const int64_t* o = offsets.data();
      for (int64_t i = 0; i < segments; ++i)
        autofocus::check_arg(o[0] == 0 && o[i] <= o[i + 1] && o[segments] <= n,
                             "offsets: expected 0 = offsets[0] <= ... <= offsets[-1] <= len(scores)");
    }
    I64 keep(n), counts(segments);
    F32 out_scores(n);
    {
      py::gil_scoped_release release;
      autofocus::soft_nms_segments_cpu(boxes.data(), scores.data(), labels_ptr(labels), offsets.data(), segments,
                                       method, sigma, iou_threshold, score_threshold, max_output,
                                       keep.mutable_data(), out_scores.mutable_data(), counts.mutable_data());
    }
    return py::make_tuple(keep, out_scores, counts);
  });
  m.def("stack_prune_cpu", [](F32 boxes, F32 chips, std::optional<F32> image_hw, double image_height,
                              double image_width, double valid_lo, double valid_hi) {
    const int64_t n = boxes.shape(0);
    check_rows("boxes", boxes, n, 2, 4);
    const bool per_box = chips.ndim() == 2;
    if (per_box) check_rows("chips", chips, n, 2, 4);
    else autofocus::check_arg(chips.ndim() == 1 && chips.shape(0) == 4, "chips: expected shape (4,) or (N, 4)");
    if (image_hw) check_rows("image_hw", *image_hw, n, 2, 2);
    py::array_t<bool> keep(n);
    const float* hw = image_hw ? image_hw->data() : nullptr;
    auto* out = reinterpret_cast<uint8_t*>(keep.mutable_data());
    {
      py::gil_scoped_release release;
      autofocus::stack_prune_cpu(boxes.data(), chips.data(), n, per_box, hw, image_height, image_width, valid_lo,
                                 valid_hi, out);
    }
    return keep;
  });
  m.def("paint_boxes_cpu", [](F32 maps, F32 boxes, I64 index, std::optional<py::array_t<bool, py::array::c_style>> keep,
                              double stride) {
    autofocus::check_arg(maps.ndim() == 3, "maps: expected 3 dimensions (B, H, W)");
    const int64_t b = maps.shape(0), h = maps.shape(1), w = maps.shape(2), n = boxes.shape(0);
    check_rows("boxes", boxes, n, 2, 4);
    check_rows("index", index, n, 1);
    if (keep) check_rows("keep", *keep, n, 1);
    // (index values out of [0, B) are skipped by the kernel: runtime/ops.py checks them, or defers that)
    F32 out({b, h, w});
    std::copy(maps.data(), maps.data() + b * h * w, out.mutable_data());
    const uint8_t* keep_ptr = keep ? reinterpret_cast<const uint8_t*>(keep->data()) : nullptr;
    {
      py::gil_scoped_release release;
      autofocus::paint_boxes_cpu(out.mutable_data(), b, h, w, boxes.data(), index.data(), keep_ptr, n, stride);
    }
    return out;
  });
  m.def("top_k_cpu", [](F32 scores, int64_t k) {
    const int64_t n = scores.shape(0);
    check_rows("scores", scores, n, 1);
    check_sizes({{"k", k}});
    py::array_t<int64_t> out(std::min(k, n));
    {
      py::gil_scoped_release release;
      autofocus::top_k_cpu(scores.data(), n, k, out.mutable_data());
    }
    return out;
  });
#ifdef WITH_CUDA
  // CUDA: device pointers as integers and the stream; outputs preallocated by runtime/ops/. Each
  // binding checks its sizes, then DeviceGuard makes the pointers' device current for the launch.
  using Ptr = std::uintptr_t;
  m.def("cuda_current_device", &autofocus::current_device);
  m.def("decode_cuda", [](Ptr scores, Ptr ltrb, int64_t n, int64_t c, int64_t h, int64_t w, float stride,
                          double score_threshold, int64_t max_candidates, Ptr scales, Ptr offsets, Ptr out_boxes,
                          Ptr out_scores, Ptr out_labels, Ptr out_batch, Ptr out_count, Ptr stream) {
    check_sizes({{"n", n}, {"c", c}, {"h", h}, {"w", w}, {"max_candidates", max_candidates}});
    autofocus::DeviceGuard guard({{"scores", scores}, {"ltrb", ltrb}, {"scales", scales}, {"offsets", offsets}, {"out_boxes", out_boxes}, {"out_scores", out_scores}, {"out_labels", out_labels}, {"out_batch", out_batch}, {"out_count", out_count}}, stream);
    autofocus::decode_cuda(reinterpret_cast<const float*>(scores), reinterpret_cast<const float*>(ltrb), n, c, h, w,
                           stride, score_threshold, max_candidates, reinterpret_cast<const float*>(scales),
                           reinterpret_cast<const float*>(offsets), reinterpret_cast<float*>(out_boxes),
                           reinterpret_cast<float*>(out_scores), reinterpret_cast<int32_t*>(out_labels),
                           reinterpret_cast<int32_t*>(out_batch), reinterpret_cast<int64_t*>(out_count), stream);
  });
  m.def("nms_cuda", [](Ptr boxes, Ptr scores, Ptr labels, int64_t n, float iou_threshold, Ptr keep, Ptr out_count,
                       Ptr stream) {
    autofocus::check_nms_size(n);
    autofocus::DeviceGuard guard({{"boxes", boxes}, {"scores", scores}, {"labels", labels}, {"keep", keep}, {"out_count", out_count}}, stream);
    autofocus::nms_cuda(reinterpret_cast<const float*>(boxes), reinterpret_cast<const float*>(scores),
                        reinterpret_cast<const int64_t*>(labels), n, iou_threshold, reinterpret_cast<int64_t*>(keep),
                        reinterpret_cast<int64_t*>(out_count), stream);
  });
  m.def("soft_nms_cuda", [](Ptr boxes, Ptr scores, Ptr labels, int64_t n, int method, float sigma,
                            float iou_threshold, float score_threshold, int64_t max_output, Ptr keep,
                            Ptr out_scores, Ptr out_count, Ptr stream) {
    check_sizes({{"n", n}});  // (max_output < 0: no limit)
    autofocus::DeviceGuard guard({{"boxes", boxes}, {"scores", scores}, {"labels", labels}, {"keep", keep}, {"out_scores", out_scores}, {"out_count", out_count}}, stream);
    autofocus::soft_nms_cuda(reinterpret_cast<const float*>(boxes), reinterpret_cast<const float*>(scores),
                             reinterpret_cast<const int64_t*>(labels), n, method, sigma, iou_threshold,
                             score_threshold, max_output, reinterpret_cast<int64_t*>(keep),
                             reinterpret_cast<float*>(out_scores), reinterpret_cast<int64_t*>(out_count), stream);
  });
  m.def("soft_nms_segments_cuda", [](Ptr boxes, Ptr scores, Ptr labels, Ptr offsets, int64_t segments, int64_t n,
                                     int method, float sigma, float iou_threshold, float score_threshold,
                                     int64_t max_output, Ptr keep, Ptr out_scores, Ptr counts, Ptr stream) {
    check_sizes({{"segments", segments}, {"n", n}});  // (max_output < 0: no limit)
    autofocus::DeviceGuard guard({{"boxes", boxes}, {"scores", scores}, {"labels", labels}, {"offsets", offsets}, {"keep", keep}, {"out_scores", out_scores}, {"counts", counts}}, stream);
    autofocus::soft_nms_segments_cuda(reinterpret_cast<const float*>(boxes), reinterpret_cast<const float*>(scores),
                                      reinterpret_cast<const int64_t*>(labels),
                                      reinterpret_cast<const int64_t*>(offsets), segments, n, method, sigma,
                                      iou_threshold, score_threshold, max_output, reinterpret_cast<int64_t*>(keep),
                                      reinterpret_cast<float*>(out_scores), reinterpret_cast<int64_t*>(counts),
                                      stream);
  });
  m.def("stack_prune_cuda", [](Ptr boxes, Ptr chips, int64_t n, bool per_box_chip, Ptr image_hw,
                               double image_height, double image_width, double valid_lo, double valid_hi, Ptr keep,
                               Ptr stream) {
    check_sizes({{"n", n}});
    autofocus::DeviceGuard guard({{"boxes", boxes}, {"chips", chips}, {"image_hw", image_hw}, {"keep", keep}}, stream);
    autofocus::stack_prune_cuda(reinterpret_cast<const float*>(boxes), reinterpret_cast<const float*>(chips), n,
                                per_box_chip, reinterpret_cast<const float*>(image_hw), image_height, image_width,
                                valid_lo, valid_hi,
                                reinterpret_cast<uint8_t*>(keep), stream);
  });
  m.def("paint_boxes_cuda", [](Ptr out, int64_t maps, int64_t height, int64_t width, Ptr boxes, Ptr index, Ptr keep,
                               int64_t n, double stride, Ptr stream) {
    check_sizes({{"maps", maps}, {"height", height}, {"width", width}, {"n", n}});
    autofocus::DeviceGuard guard({{"out", out}, {"boxes", boxes}, {"index", index}, {"keep", keep}}, stream);
    autofocus::paint_boxes_cuda(reinterpret_cast<float*>(out), maps, height, width,
                                reinterpret_cast<const float*>(boxes), reinterpret_cast<const int64_t*>(index),
                                reinterpret_cast<const uint8_t*>(keep), n, stride, stream);
  });
  m.def("top_k_cuda", [](Ptr scores, int64_t n, int64_t k, Ptr out, Ptr stream) {
    check_sizes({{"n", n}, {"k", k}});
    autofocus::DeviceGuard guard({{"scores", scores}, {"out", out}}, stream);
    autofocus::top_k_cuda(reinterpret_cast<const float*>(scores), n, k, reinterpret_cast<int64_t*>(out), stream);
  });
#endif
}
