// KV held as tensors on the engine's device in its compute dtype, made once by
// Engine::ToDevice and then used by any number of sequences without a host-to-device
// copy: what the registry's device tier keeps. Opaque here, so that no torch type
// crosses model/'s public headers; the engine defines the one implementation.
// Thread-safety: immutable once made.
#ifndef APESERVE_MODEL_DEVICE_KV_H_
#define APESERVE_MODEL_DEVICE_KV_H_

#include <cstddef>

namespace apeserve::model {

class DeviceKv {
 public:
  DeviceKv() = default;
  DeviceKv(const DeviceKv&) = delete;
  DeviceKv& operator=(const DeviceKv&) = delete;
  virtual ~DeviceKv() = default;

  // Bytes the tensors occupy on the device.
  virtual size_t bytes() const = 0;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_DEVICE_KV_H_
