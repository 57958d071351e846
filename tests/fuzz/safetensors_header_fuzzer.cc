// Fuzzes the JSON header of a safetensors file: the input is the header's text, which
// the fuzzer wraps in a file (its length in front, 256 bytes of tensor data behind), so
// that every mutation reaches the JSON checks instead of failing the length prefix.
#include <cstddef>
#include <cstdint>
#include <string>

#include "model/safetensors_file.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/safetensors_checks.h"

namespace apeserve::model {
namespace {

constexpr size_t kDataBytes = 256;

void FuzzOne(absl::string_view header) {
  static fuzz::MemoryFile* const file = new fuzz::MemoryFile();
  std::string bytes;
  bytes.reserve(8 + header.size() + kDataBytes);
  for (int i = 0; i < 8; ++i) {
    bytes.push_back(static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i)));
  }
  bytes.append(header.data(), header.size());
  bytes.append(kDataBytes, '\x3c');
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> st = SafetensorsFile::Open(file->Write(bytes));
  if (st.ok()) fuzz::CheckSafetensors(**st);
}

}  // namespace
}  // namespace apeserve::model

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  apeserve::model::FuzzOne(apeserve::fuzz::AsView(data, size));
  return 0;
}
