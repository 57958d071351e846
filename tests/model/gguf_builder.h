// Builds GGUF files byte by byte for tests: valid ones, and with the hooks needed to
// break them on purpose (raw values, wrong counts, wrong offsets).
#ifndef APESERVE_TESTS_MODEL_GGUF_BUILDER_H_
#define APESERVE_TESTS_MODEL_GGUF_BUILDER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace apeserve::testing {

class GgufBuilder {
 public:
  // Metadata. The value type numbers are GGUF's (8 = string, 9 = array, ...).
  GgufBuilder& String(absl::string_view key, absl::string_view value);
  GgufBuilder& Uint32(absl::string_view key, uint32_t value);
  GgufBuilder& Float32(absl::string_view key, float value);
  GgufBuilder& Bool(absl::string_view key, uint8_t value);
  GgufBuilder& StringArray(absl::string_view key, const std::vector<std::string>& values);
  // A key followed by raw bytes as its type and value.
  GgufBuilder& Raw(absl::string_view key, uint32_t type, absl::string_view value_bytes);

  // A tensor of `ggml_type` with GGUF dimensions (innermost first) and its data; the
  // offset is the next aligned one unless `offset` is given.
  GgufBuilder& Tensor(absl::string_view name, const std::vector<uint64_t>& dims, uint32_t ggml_type,
                      absl::string_view data, int64_t offset = -1);

  // Declared counts other than the real ones, to test refusal.
  GgufBuilder& OverrideCounts(uint64_t tensors, uint64_t metadata);

  std::string Build(uint32_t version = 3, uint64_t alignment = 32) const;

  static void AppendU32(std::string& out, uint32_t value);
  static void AppendU64(std::string& out, uint64_t value);
  static void AppendString(std::string& out, absl::string_view value);

 private:
  struct TensorSpec {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::string data;
    int64_t offset;
  };
  std::string metadata_;
  uint64_t metadata_count_ = 0;
  std::vector<TensorSpec> tensors_;
  int64_t tensor_count_override_ = -1;
  int64_t metadata_count_override_ = -1;
};

}  // namespace apeserve::testing

#endif  // APESERVE_TESTS_MODEL_GGUF_BUILDER_H_
