// The tensor types of GGML/GGUF files: their block layout, and dequantization to fp32.
//
// Quantized types store blocks of `block_elements` values in `block_bytes` bytes; a
// row's element count must be a multiple of the block. Dequantization follows the
// reference arithmetic of ggml (same fp32 operations in the same order), so its results
// equal the gguf Python package's bit for bit. Thread-safe: pure functions.
#ifndef APESERVE_MODEL_GGML_TYPE_H_
#define APESERVE_MODEL_GGML_TYPE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

// Values as written in GGUF files; gaps are types ggml retired.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

struct GgmlTypeInfo {
  GgmlType type;
  absl::string_view name;   // as ggml names it, e.g. "Q4_K"
  uint32_t block_elements;  // values per block (1 for plain floats)
  uint32_t block_bytes;     // bytes per block
};

// The layout of type `id` as found in a file; nullptr when we do not read that type.
const GgmlTypeInfo* FindGgmlType(uint32_t id);

// Decodes `count` values of `type` from `src` into `dst`.
// INVALID_ARGUMENT: `count` is not a whole number of blocks or `src` is not exactly
// their size. UNIMPLEMENTED: a type without dequantization (none at present).
absl::Status Dequantize(GgmlType type, absl::string_view src, int64_t count, float* dst);

// IEEE half and bfloat16 to float, exactly (subnormals, infinities and NaN included).
float HalfToFloat(uint16_t half);
float BFloat16ToFloat(uint16_t bf16);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_GGML_TYPE_H_
