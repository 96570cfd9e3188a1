// CUDA error checking for the kernels in csrc/ops/cuda/.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>  // std::uintptr_t (not pulled in by every toolchain's headers)
#include <stdexcept>
#include <string>

namespace autofocus {

// CUDA failures reach Python as RuntimeError naming the call.
inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}
#define AF_CUDA_CHECK(call) ::autofocus::cuda_check((call), #call)

inline cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

}  // namespace autofocus
