// Keys and values as the model computed them, as a plain value: the unit the engine
// hands out for a shared prefix or an encoded context, and the unit the storage layer
// serializes without knowing the engine (no torch type crosses this header).
//
// Layout of one layer's bytes: K then V, each [kv_heads, length, head_dim], row-major,
// in `dtype`, native byte order. K is stored after the rotary embedding at positions
// start_position .. start_position + length - 1, in the half-split rotary layout of
// Hugging Face's Llama (GGUF weights are un-interleaved at load), whatever the source
// format. Thread-safety: a plain value.
#ifndef APESERVE_MODEL_KV_SEGMENT_H_
#define APESERVE_MODEL_KV_SEGMENT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

// Values are part of the stored format: never renumber.
enum class KvDtype : uint8_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Bytes of one element: 4 or 2.
size_t KvDtypeSize(KvDtype dtype);
// "float32", "bfloat16" or "float16".
absl::string_view KvDtypeName(KvDtype dtype);
// INVALID_ARGUMENT for any other name.
absl::StatusOr<KvDtype> ParseKvDtype(absl::string_view name);

struct KvSegment {
  KvDtype dtype = KvDtype::kFloat32;
  int32_t num_layers = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int64_t start_position = 0;       // rotary position of the first token
  int64_t length = 0;               // tokens
  std::vector<std::string> layers;  // num_layers entries of LayerBytes() bytes

  // 2 * kv_heads * length * head_dim * KvDtypeSize(dtype).
  size_t LayerBytes() const;
  size_t TotalBytes() const { return LayerBytes() * layers.size(); }

  // OK when the shape is positive where it must be and every layer holds exactly
  // LayerBytes() bytes; INVALID_ARGUMENT naming the first mismatch otherwise.
  absl::Status Validate() const;
  // The shape part of Validate(): dtype and dimensions in bounds, whatever `layers` holds.
  absl::Status ValidateShape() const;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_KV_SEGMENT_H_
