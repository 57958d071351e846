// A KV encoder without a model, for the registry's tests that must run without torch
// (the ThreadSanitizer build): every value is a pure function of (model fingerprint,
// prefix hash, token, position, layer, head, channel), so a rebuilt KV must equal the
// original bit for bit, and KV of another model or prefix differs. It counts its calls.
// Engine-backed tests of the same registry live in registry_engine_test.cc.
#ifndef APESERVE_TESTS_CACHE_SYNTHETIC_KV_H_
#define APESERVE_TESTS_CACHE_SYNTHETIC_KV_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "cache/context_registry.h"
#include "model/kv_segment.h"

namespace apeserve::testing {

struct SyntheticKvShape {
  model::KvDtype dtype = model::KvDtype::kFloat32;
  int32_t num_layers = 3;
  int32_t kv_heads = 2;
  int32_t head_dim = 8;
  int64_t prefix_length = 5;  // where the context's positions start
};

// The KV of `tokens` as the synthetic model `fingerprint` computes it after `prefix_hash`.
model::KvSegment SyntheticKv(const std::string& fingerprint, absl::string_view prefix_hash,
                             absl::Span<const int32_t> tokens, const SyntheticKvShape& shape);

// An encoder for ContextRegistry::Open, and how often it ran.
struct CountingEncoder {
  cache::KvEncoder encoder;
  std::shared_ptr<std::atomic<int>> calls;
};
CountingEncoder MakeSyntheticEncoder(const std::string& fingerprint,
                                     const SyntheticKvShape& shape = {});

// Distinct token ids for document number `n` (length 3 + n % 13).
std::vector<int32_t> SyntheticTokens(int n);

}  // namespace apeserve::testing

#endif  // APESERVE_TESTS_CACHE_SYNTHETIC_KV_H_
