// A model's fingerprint: a 128-bit hash of what determines its outputs, the tensors'
// names, types, shapes and bytes, and nothing else (not the file name, not metadata
// such as the model's display name). Stored KV is keyed on it, so a changed model
// never reuses old KV. Not thread-safe: one builder per model.
#ifndef APESERVE_MODEL_FINGERPRINT_H_
#define APESERVE_MODEL_FINGERPRINT_H_

#include <memory>
#include <string>

#include "absl/strings/string_view.h"

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
  // 32 lowercase hex digits.
  std::string Finish();

 private:
  void AddField(absl::string_view field);  // length-prefixed, so fields cannot run together

  struct State;
  std::unique_ptr<State> state_;
};

class GgufFile;

// The fingerprint of every tensor of a GGUF file, in name order.
std::string FingerprintGguf(const GgufFile& file);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_FINGERPRINT_H_
