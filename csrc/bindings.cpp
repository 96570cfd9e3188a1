// The only file that includes pybind11: one m.def per op. CPU entry points take NumPy arrays (checked
// for dtype and layout by runtime/ops.py, converted to raw pointers here); CUDA entry points take device
// pointers as integers plus the CUDA stream, so the extension never links libtorch.
#include <algorithm>
#include <optional>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "ops/decode.h"
#include "ops/nms.h"
#include "ops/soft_nms.h"
#include "ops/stack_prune.h"
#include "ops/top_k.h"

namespace py = pybind11;

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

  // ---- box ops: decode, nms, soft_nms, stack_prune, top_k ----
  // CPU: C-contiguous arrays of the right dtype (checked in runtime/ops.py; pybind11 refuses others
  // instead of converting). Data-dependent sizes: computed into full-size buffers, returned trimmed.
  using F32 = py::array_t<float, py::array::c_style>;
  using I64 = py::array_t<int64_t, py::array::c_style>;
  const auto labels_ptr = [](const std::optional<I64>& labels) -> const int64_t* {
    return labels ? labels->data() : nullptr;
  };
  m.def("decode_cpu", [](F32 scores, F32 ltrb, float stride, double score_threshold, int64_t max_candidates,
                         F32 scales, F32 offsets) {
    const int64_t n = scores.shape(0), c = scores.shape(1), h = scores.shape(2), w = scores.shape(3);
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
  m.def("stack_prune_cpu", [](F32 boxes, F32 chips, double image_height, double image_width, double valid_lo,
                              double valid_hi) {
    const int64_t n = boxes.shape(0);
    py::array_t<bool> keep(n);
    const bool per_box = chips.ndim() == 2;
    auto* out = reinterpret_cast<uint8_t*>(keep.mutable_data());
    {
      py::gil_scoped_release release;
      autofocus::stack_prune_cpu(boxes.data(), chips.data(), n, per_box, image_height, image_width, valid_lo,
                                 valid_hi, out);
    }
    return keep;
  });
  m.def("top_k_cpu", [](F32 scores, int64_t k) {
    const int64_t n = scores.shape(0);
    py::array_t<int64_t> out(std::min(k, n));
    {
      py::gil_scoped_release release;
      autofocus::top_k_cpu(scores.data(), n, k, out.mutable_data());
    }
    return out;
  });
#ifdef WITH_CUDA
  // CUDA: device pointers as integers and the stream; outputs preallocated by runtime/ops.py.
  using Ptr = std::uintptr_t;
  m.def("decode_cuda", [](Ptr scores, Ptr ltrb, int64_t n, int64_t c, int64_t h, int64_t w, float stride,
                          double score_threshold, int64_t max_candidates, Ptr scales, Ptr offsets, Ptr out_boxes,
                          Ptr out_scores, Ptr out_labels, Ptr out_batch, Ptr out_count, Ptr stream) {
    autofocus::decode_cuda(reinterpret_cast<const float*>(scores), reinterpret_cast<const float*>(ltrb), n, c, h, w,
                           stride, score_threshold, max_candidates, reinterpret_cast<const float*>(scales),
                           reinterpret_cast<const float*>(offsets), reinterpret_cast<float*>(out_boxes),
                           reinterpret_cast<float*>(out_scores), reinterpret_cast<int32_t*>(out_labels),
                           reinterpret_cast<int32_t*>(out_batch), reinterpret_cast<int64_t*>(out_count), stream);
  });
  m.def("nms_cuda", [](Ptr boxes, Ptr scores, Ptr labels, int64_t n, float iou_threshold, Ptr keep, Ptr out_count,
                       Ptr stream) {
    autofocus::nms_cuda(reinterpret_cast<const float*>(boxes), reinterpret_cast<const float*>(scores),
                        reinterpret_cast<const int64_t*>(labels), n, iou_threshold, reinterpret_cast<int64_t*>(keep),
                        reinterpret_cast<int64_t*>(out_count), stream);
  });
  m.def("soft_nms_cuda", [](Ptr boxes, Ptr scores, Ptr labels, int64_t n, int method, float sigma,
                            float iou_threshold, float score_threshold, int64_t max_output, Ptr keep,
                            Ptr out_scores, Ptr out_count, Ptr stream) {
    autofocus::soft_nms_cuda(reinterpret_cast<const float*>(boxes), reinterpret_cast<const float*>(scores),
                             reinterpret_cast<const int64_t*>(labels), n, method, sigma, iou_threshold,
                             score_threshold, max_output, reinterpret_cast<int64_t*>(keep),
                             reinterpret_cast<float*>(out_scores), reinterpret_cast<int64_t*>(out_count), stream);
  });
  m.def("stack_prune_cuda", [](Ptr boxes, Ptr chips, int64_t n, bool per_box_chip, double image_height,
                               double image_width, double valid_lo, double valid_hi, Ptr keep, Ptr stream) {
    autofocus::stack_prune_cuda(reinterpret_cast<const float*>(boxes), reinterpret_cast<const float*>(chips), n,
                                per_box_chip, image_height, image_width, valid_lo, valid_hi,
                                reinterpret_cast<uint8_t*>(keep), stream);
  });
  m.def("top_k_cuda", [](Ptr scores, int64_t n, int64_t k, Ptr out, Ptr stream) {
    autofocus::top_k_cuda(reinterpret_cast<const float*>(scores), n, k, reinterpret_cast<int64_t*>(out), stream);
  });
#endif
}
