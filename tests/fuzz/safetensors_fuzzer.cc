// Fuzzes the safetensors reader with the input as a whole file: the 8-byte header
// length, the JSON header and the tensor bytes (SafetensorsFile::Open).
#include <cstddef>
#include <cstdint>

#include "model/safetensors_file.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/safetensors_checks.h"

namespace apeserve::model {
namespace {

void FuzzOne(absl::string_view bytes) {
  static fuzz::MemoryFile* const file = new fuzz::MemoryFile();
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> st = SafetensorsFile::Open(file->Write(bytes));
  if (st.ok()) fuzz::CheckSafetensors(**st);
}

}  // namespace
}  // namespace apeserve::model

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  apeserve::model::FuzzOne(apeserve::fuzz::AsView(data, size));
  return 0;
}
