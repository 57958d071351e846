#include "model/kv_segment.h"

#include "absl/strings/str_cat.h"

namespace apeserve::model {

size_t KvDtypeSize(KvDtype dtype) { return dtype == KvDtype::kFloat32 ? 4 : 2; }

absl::string_view KvDtypeName(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFloat32:
      return "float32";
    case KvDtype::kBFloat16:
      return "bfloat16";
    case KvDtype::kFloat16:
      return "float16";
  }
  return "unknown";
}

absl::StatusOr<KvDtype> ParseKvDtype(absl::string_view name) {
  for (const KvDtype dtype : {KvDtype::kFloat32, KvDtype::kBFloat16, KvDtype::kFloat16}) {
    if (name == KvDtypeName(dtype)) return dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("KV dtype '", name, "' is not one of float32, bfloat16, float16"));
}

size_t KvSegment::LayerBytes() const {
  if (kv_heads <= 0 || head_dim <= 0 || length <= 0) return 0;
  return 2 * static_cast<size_t>(kv_heads) * static_cast<size_t>(length) *
         static_cast<size_t>(head_dim) * KvDtypeSize(dtype);
}

absl::Status KvSegment::ValidateShape() const {
  if (KvDtypeName(dtype) == "unknown") {
    return absl::InvalidArgumentError(
        absl::StrCat("KV dtype code ", static_cast<int>(dtype), " is unknown"));
  }
  // The bounds keep LayerBytes() far from overflow for any header a file may hold.
  constexpr int32_t kMaxDim = 1 << 12;
  constexpr int64_t kMaxTokens = int64_t{1} << 32;
  if (num_layers <= 0 || num_layers > kMaxDim || kv_heads <= 0 || kv_heads > kMaxDim ||
      head_dim <= 0 || head_dim > kMaxDim || length < 0 || length > kMaxTokens ||
      start_position < 0 || start_position > kMaxTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV shape is invalid: ", num_layers, " layers, ", kv_heads, " heads, ",
                     head_dim, " head dim, ", length, " tokens from position ", start_position));
  }
  return absl::OkStatus();
}

absl::Status KvSegment::Validate() const {
  if (absl::Status shape = ValidateShape(); !shape.ok()) return shape;
  if (layers.size() != static_cast<size_t>(num_layers)) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV holds ", layers.size(), " layers, expected ", num_layers));
  }
  const size_t expected = LayerBytes();
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].size() != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV layer ", i, " holds ", layers[i].size(), " bytes, expected ", expected));
    }
  }
  return absl::OkStatus();
}

}  // namespace apeserve::model
