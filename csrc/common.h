// Shared by the CPU and CUDA implementations: the per-element bodies are __host__ __device__ so the
// CPU tests exercise the same logic the GPU runs.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define AF_HD __host__ __device__ __forceinline__
#else
#define AF_HD inline
#endif

namespace autofocus {

// Bad arguments reach Python as ValueError (pybind11 maps std::invalid_argument to ValueError).
inline void check_arg(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

}  // namespace autofocus
