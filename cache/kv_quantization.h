// Optional int8 storage of K and V: symmetric, one float32 scale per group, where a
// group is a channel (one head-dim index of one head, across the tokens) or a token
// (one token of one head, across the head dimension). Keys have a few large channels,
// so per-channel groups keep their error small; per-token scales adapt to each token.
//
// Error bound (what tests check): every value x comes back as x' with
//   |x - x'| <= s / 2,  s = max |x| over its group / 127,
// plus the rounding of x' to the KV dtype when that is bfloat16. Only float32 and
// bfloat16 KV can be quantized. Thread-safety: pure functions.
#ifndef APESERVE_CACHE_KV_QUANTIZATION_H_
#define APESERVE_CACHE_KV_QUANTIZATION_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/kv_segment.h"

namespace apeserve::cache {

// Values are part of the stored format: never renumber.
enum class KvQuantization : uint8_t { kNone = 0, kInt8PerChannel = 1, kInt8PerToken = 2 };

// "none", "int8_per_channel", "int8_per_token".
absl::string_view KvQuantizationName(KvQuantization quantization);
// INVALID_ARGUMENT for any other name.
absl::StatusOr<KvQuantization> ParseKvQuantization(absl::string_view name);

// Whether KV of `dtype` can be stored as `quantization` (kNone always can).
bool CanQuantize(model::KvDtype dtype, KvQuantization quantization);

// Bytes of one quantized layer of `shape` (layers need not be filled in).
size_t QuantizedLayerBytes(const model::KvSegment& shape, KvQuantization quantization);

// One layer's bytes (K then V, [kv_heads, length, head_dim] of shape.dtype) as int8
// values (K then V) followed by float32 scales (K's then V's). INVALID_ARGUMENT if the
// dtype cannot be quantized, the size is wrong, or a value is not finite.
absl::StatusOr<std::string> QuantizeLayer(absl::string_view layer, const model::KvSegment& shape,
                                          KvQuantization quantization);

// The inverse: a layer in shape.dtype. INVALID_ARGUMENT if the size is wrong.
absl::StatusOr<std::string> DequantizeLayer(absl::string_view quantized,
                                            const model::KvSegment& shape,
                                            KvQuantization quantization);

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_KV_QUANTIZATION_H_
