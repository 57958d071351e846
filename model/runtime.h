// The compute runtime under the model: which libtorch, which devices, and a self-test
// that proves the chosen device computes correctly before a server takes traffic.
//
// This header is free of torch types so that callers outside model/ compile without
// torch headers. All functions are thread-safe.
#ifndef APESERVE_MODEL_RUNTIME_H_
#define APESERVE_MODEL_RUNTIME_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

struct RuntimeInfo {
  std::string torch_version;    // e.g. "2.15.0"
  bool cuda_compiled = false;   // libtorch carries its CUDA backend
  bool cuda_available = false;  // ...and a CUDA device and driver answer
  int cuda_device_count = 0;
  int intra_op_threads = 0;  // threads of libtorch's CPU kernels
};

// Describes the libtorch this process runs on.
RuntimeInfo GetRuntimeInfo();

enum class DeviceType { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;  // CUDA ordinal; 0 for the CPU

  // "cpu" or "cuda:N".
  std::string ToString() const;
  bool operator==(const Device&) const = default;
};

// Resolves a device name: "auto" (the first CUDA device if there is one, else the
// CPU), "cpu", "cuda" (= "cuda:0") or "cuda:N".
// INVALID_ARGUMENT: the name is none of these.
// FAILED_PRECONDITION: a CUDA device was named that this machine does not have.
absl::StatusOr<Device> ResolveDevice(absl::string_view name);

// Multiplies two small matrices on `device` and compares the product with one
// computed element by element on the host, so that a broken driver, library or
// device is found at start and not in the first request.
// INTERNAL: the product is wrong. UNAVAILABLE: libtorch failed on the device.
absl::Status SelfTest(const Device& device);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_RUNTIME_H_
