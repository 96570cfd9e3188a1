// DeviceGuard (device_guard.h): the device of the bindings' pointers, made current for one launch.
#include <stdexcept>
#include <string>

#include "cuda_utils.cuh"
#include "device_guard.h"

namespace autofocus {

DeviceGuard::DeviceGuard(std::initializer_list<Named> pointers, std::uintptr_t stream) {
  const char* first = nullptr;
  for (const auto& [name, address] : pointers) {
    if (address == 0) continue;
    cudaPointerAttributes attr{};
    const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(address));
    if (err != cudaSuccess) {
      cudaGetLastError();  // not sticky: leave no error behind for the next call
      throw std::runtime_error(std::string("CUDA error in cudaPointerGetAttributes(") + name + "): " +
                               cudaGetErrorString(err));
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
      throw std::invalid_argument(std::string(name) + ": expected CUDA device memory, got a host address");
    if (device_ < 0) {
      device_ = attr.device;
      first = name;
    } else if (attr.device != device_) {
      throw std::invalid_argument(std::string(name) + ": on cuda:" + std::to_string(attr.device) + ", but " +
                                  first + " is on cuda:" + std::to_string(device_) +
                                  " (every tensor of one call must be on one device)");
    }
  }
  if (device_ < 0) return;  // nothing to launch on (every pointer null): leave the device alone
#if CUDART_VERSION >= 12080
  if (stream != 0) {
    int stream_device = -1;
    if (cudaStreamGetDevice(as_stream(stream), &stream_device) == cudaSuccess && stream_device != device_)
      throw std::invalid_argument("stream: belongs to cuda:" + std::to_string(stream_device) + ", the tensors are "
                                  "on cuda:" + std::to_string(device_));
    cudaGetLastError();
  }
#else
  (void)stream;
#endif
  AF_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device_) AF_CUDA_CHECK(cudaSetDevice(device_));
}

DeviceGuard::~DeviceGuard() {
  if (device_ >= 0 && previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
}

int current_device() {
  int device = -1;
  AF_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

}  // namespace autofocus
