// CUDA error checking for the kernels in csrc/ops/cuda/.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>  // std::uintptr_t (not pulled in by every toolchain's headers)
#include <mutex>
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

// The kernels' temporary buffers come from the device's default memory pool (cudaMallocAsync). Its
// release threshold is 0 by default: every synchronisation hands the freed memory back to the driver,
// and the next cudaMallocAsync maps it again (~40 us each on an H100, torch.profiler). Once per device
// the pool is told to keep what it has.
inline void keep_pool_memory() {
  constexpr int kMaxDevices = 64;
  static std::once_flag once[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return;
  std::call_once(once[device], [device] {
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess) return;
    uint64_t keep_all = UINT64_MAX;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all);
  });
}

}  // namespace autofocus
