// The only file that includes pybind11: one m.def per op. CPU entry points take NumPy arrays (checked
// for dtype and layout by runtime/ops.py, converted to raw pointers here); CUDA entry points take device
// pointers as integers plus the CUDA stream, so the extension never links libtorch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"

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
}
