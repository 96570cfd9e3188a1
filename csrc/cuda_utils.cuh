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

// The kernels' temporary buffers come from a memory pool of the extension's own, one per device, made on
// first use, that keeps the memory it has (release threshold: all). The device's default pool is left as
// the process set it: with its default threshold of 0 every synchronisation hands freed memory back to
// the driver and the next cudaMallocAsync maps it again (~40 us each on an H100, torch.profiler), but
// changing that threshold would change it for every library on that pool. The pool holds at most the
// largest scratch the ops needed at once; its memory is freed with cudaFreeAsync like any other.
inline cudaMemPool_t scratch_pool(int device) {
  constexpr int kMaxDevices = 64;
  static std::once_flag once[kMaxDevices];
  static cudaMemPool_t pools[kMaxDevices] = {};
  static cudaError_t errors[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices)
    throw std::runtime_error("CUDA device " + std::to_string(device) + ": more devices than the extension handles");
  std::call_once(once[device], [device] {
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    errors[device] = cudaMemPoolCreate(&pools[device], &props);
    if (errors[device] == cudaSuccess) {
      uint64_t keep_all = UINT64_MAX;
      errors[device] = cudaMemPoolSetAttribute(pools[device], cudaMemPoolAttrReleaseThreshold, &keep_all);
    }
  });
  cuda_check(errors[device], "cudaMemPoolCreate (the extension's scratch pool)");
  return pools[device];
}

// cudaMallocAsync from the current device's scratch_pool, in stream order on s.
inline void scratch_malloc_async(void** ptr, size_t bytes, cudaStream_t s) {
  int device = 0;
  AF_CUDA_CHECK(cudaGetDevice(&device));
  AF_CUDA_CHECK(cudaMallocFromPoolAsync(ptr, bytes, scratch_pool(device), s));
}

}  // namespace autofocus
