// A model's fingerprint: a 128-bit hash of what determines its outputs, the tensors'
// names, types, shapes and bytes, and nothing else (not the file name, not metadata
// such as the model's display name). Stored KV is keyed on it, so a changed model
// never reuses old KV. Not thread-safe: one builder per model.
#ifndef APESERVE_MODEL_FINGERPRINT_H_
#define APESERVE_MODEL_FINGERPRINT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace apeserve::model {

class FingerprintBuilder {
 public:
  FingerprintBuilder();
  FingerprintBuilder(const FingerprintBuilder&) = delete;
  FingerprintBuilder& operator=(const FingerprintBuilder&) = delete;
  ~FingerprintBuilder();

  // Adds one tensor. Tensors must be added in a fixed order (e.g. sorted by name).
  void AddTensor(absl::string_view name, absl::string_view type, absl::string_view shape,
                 absl::string_view bytes);
  // Adds any field; fields are length-prefixed, so they cannot run together.
  void AddField(absl::string_view field);
  // 32 lowercase hex digits.
  std::string Finish();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

class GgufFile;

// The fingerprint of a token sequence under a model: names a shared prefix, whose KV
// depends on exactly these two.
std::string FingerprintTokens(absl::string_view model_fingerprint,
                              absl::Span<const int32_t> tokens);

// The fingerprint of every tensor of a GGUF file, in name order.
std::string FingerprintGguf(const GgufFile& file);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_FINGERPRINT_H_
