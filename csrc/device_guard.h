// The CUDA bindings' device boundary. The bindings take device pointers as integers (the extension does
// not link libtorch), so nothing else tells them which GPU the data is on: DeviceGuard finds out from the
// pointers themselves (cudaPointerGetAttributes), refuses host memory and pointers on different devices
// with a ValueError naming the argument, makes their device current for the launch and puts the caller's
// device back afterwards. Null pointers (optional arguments) are skipped. Plain C++: defined in
// ops/cuda/device_guard.cu, so bindings.cpp needs no CUDA headers.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <utility>

namespace autofocus {

class DeviceGuard {
 public:
  using Named = std::pair<const char*, std::uintptr_t>;
  // pointers: (argument name, address); stream: the launch stream (0: the current device's default).
  DeviceGuard(std::initializer_list<Named> pointers, std::uintptr_t stream);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  int device() const { return device_; }

 private:
  int previous_ = -1;
  int device_ = -1;
};

// The device current now (cudaGetDevice), for tests of the guard's restore.
int current_device();

}  // namespace autofocus
