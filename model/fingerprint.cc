#include "model/fingerprint.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "absl/strings/str_join.h"
#include "model/gguf_file.h"

namespace apeserve::model {

struct FingerprintBuilder::State {
  XXH3_state_t* xxh = XXH3_createState();
  ~State() { XXH3_freeState(xxh); }
};

FingerprintBuilder::FingerprintBuilder() : state_(std::make_unique<State>()) {
  XXH3_128bits_reset(state_->xxh);
}

FingerprintBuilder::~FingerprintBuilder() = default;

void FingerprintBuilder::AddField(absl::string_view field) {
  const uint64_t length = field.size();
  XXH3_128bits_update(state_->xxh, &length, sizeof(length));
  XXH3_128bits_update(state_->xxh, field.data(), field.size());
}

void FingerprintBuilder::AddTensor(absl::string_view name, absl::string_view type,
                                   absl::string_view shape, absl::string_view bytes) {
  AddField(name);
  AddField(type);
  AddField(shape);
  AddField(bytes);
}

std::string FingerprintBuilder::Finish() {
  const XXH128_hash_t hash = XXH3_128bits_digest(state_->xxh);
  char hex[33];
  std::snprintf(hex, sizeof(hex), "%016llx%016llx", static_cast<unsigned long long>(hash.high64),
                static_cast<unsigned long long>(hash.low64));
  return hex;
}

std::string FingerprintTokens(absl::string_view model_fingerprint,
                              absl::Span<const int32_t> tokens) {
  FingerprintBuilder builder;
  builder.AddField(model_fingerprint);
  // Little-endian 32-bit ids, as on every platform we build for.
  builder.AddField(absl::string_view(reinterpret_cast<const char*>(tokens.data()),
                                     tokens.size() * sizeof(int32_t)));
  return builder.Finish();
}

std::string FingerprintGguf(const GgufFile& file) {
  std::vector<const GgufTensor*> tensors;
  for (const GgufTensor& tensor : file.tensors()) tensors.push_back(&tensor);
  std::sort(tensors.begin(), tensors.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->name < b->name; });
  FingerprintBuilder builder;
  for (const GgufTensor* tensor : tensors) {
    builder.AddTensor(tensor->name, tensor->type->name, absl::StrJoin(tensor->shape, ","),
                      tensor->bytes);
  }
  return builder.Finish();
}

}  // namespace apeserve::model
