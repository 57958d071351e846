#include "tests/cache/synthetic_kv.h"

#include <xxhash.h>

#include <cstring>

namespace apeserve::testing {
namespace {

// A float in [-8, 8) with all mantissa bits in use, from a hash.
float ValueFromHash(uint64_t hash) {
  return static_cast<float>(
      static_cast<double>(hash >> 11) / static_cast<double>(1ULL << 53) * 16.0 - 8.0);
}

void StoreValue(float value, model::KvDtype dtype, char* out) {
  if (dtype == model::KvDtype::kFloat32) {
    std::memcpy(out, &value, sizeof(float));
    return;
  }
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(float));
  const auto half = static_cast<uint16_t>(bits >> 16);  // bfloat16 or just 16 bits
  std::memcpy(out, &half, sizeof(half));
}

}  // namespace

model::KvSegment SyntheticKv(const std::string& fingerprint, absl::string_view prefix_hash,
                             absl::Span<const int32_t> tokens, const SyntheticKvShape& shape) {
  model::KvSegment kv{.dtype = shape.dtype,
                      .num_layers = shape.num_layers,
                      .kv_heads = shape.kv_heads,
                      .head_dim = shape.head_dim,
                      .start_position = shape.prefix_length,
                      .length = static_cast<int64_t>(tokens.size()),
                      .layers = {}};
  const uint64_t seed = XXH3_64bits_withSeed(prefix_hash.data(), prefix_hash.size(),
                                             XXH3_64bits(fingerprint.data(), fingerprint.size()));
  const size_t element = model::KvDtypeSize(shape.dtype);
  kv.layers.resize(static_cast<size_t>(shape.num_layers));
  for (int32_t layer = 0; layer < shape.num_layers; ++layer) {
    std::string& bytes = kv.layers[static_cast<size_t>(layer)];
    bytes.assign(kv.LayerBytes(), '\0');
    size_t offset = 0;
    for (int tensor = 0; tensor < 2; ++tensor) {
      for (int32_t head = 0; head < shape.kv_heads; ++head) {
        for (size_t t = 0; t < tokens.size(); ++t) {
          for (int32_t channel = 0; channel < shape.head_dim; ++channel, offset += element) {
            const int64_t fields[] = {tokens[t], static_cast<int64_t>(t) + shape.prefix_length,
                                      layer,     tensor,
                                      head,      channel};
            StoreValue(ValueFromHash(XXH3_64bits_withSeed(fields, sizeof(fields), seed)),
                       shape.dtype, bytes.data() + offset);
          }
        }
      }
    }
  }
  return kv;
}

CountingEncoder MakeSyntheticEncoder(const std::string& fingerprint,
                                     const SyntheticKvShape& shape) {
  auto calls = std::make_shared<std::atomic<int>>(0);
  cache::KvEncoder encoder =
      [fingerprint, shape, calls](
          absl::string_view prefix_hash,
          absl::Span<const int32_t> tokens) -> absl::StatusOr<model::KvSegment> {
    calls->fetch_add(1);
    return SyntheticKv(fingerprint, prefix_hash, tokens, shape);
  };
  return {std::move(encoder), std::move(calls)};
}

std::vector<int32_t> SyntheticTokens(int n) {
  std::vector<int32_t> tokens(static_cast<size_t>(3 + n % 13));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = 1000 * n + static_cast<int32_t>(i);
  return tokens;
}

}  // namespace apeserve::testing
