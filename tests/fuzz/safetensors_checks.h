// What must hold of any safetensors file the reader accepts; shared by the two
// safetensors fuzzers. Thread-safety: a pure check.
#ifndef APESERVE_TESTS_FUZZ_SAFETENSORS_CHECKS_H_
#define APESERVE_TESTS_FUZZ_SAFETENSORS_CHECKS_H_

#include <cstddef>
#include <cstdint>

#include "model/safetensors_file.h"
#include "tests/fuzz/fuzz_support.h"

namespace apeserve::fuzz {

// Every tensor has a known dtype, non-negative extents and exactly the bytes its shape
// needs, and those bytes can be read (ASan and the mapping's end catch a view that
// reaches too far).
inline void CheckSafetensors(const model::SafetensorsFile& st) {
  volatile uint8_t sink = 0;
  for (const auto& [name, tensor] : st.tensors()) {
    const int element_bytes = model::DtypeBytes(tensor.dtype);
    Check(element_bytes > 0, "accepted an unknown dtype");
    uint64_t elements = 1;
    for (const int64_t extent : tensor.shape) {
      Check(extent >= 0, "accepted a negative extent");
      elements *= static_cast<uint64_t>(extent);
    }
    Check(tensor.bytes.size() == elements * static_cast<uint64_t>(element_bytes),
          "tensor bytes disagree with its shape");
    Check(st.Find(name) == &tensor, "tensor lookup disagrees");
    uint8_t sum = 0;
    for (const char byte : tensor.bytes) sum = static_cast<uint8_t>(sum + byte);
    sink = static_cast<uint8_t>(sink + sum);
  }
}

}  // namespace apeserve::fuzz

#endif  // APESERVE_TESTS_FUZZ_SAFETENSORS_CHECKS_H_
