// Attention of one new token per sequence for every decoding sequence of a batch in one
// call, on the CPU in float32: the cache append, the scores, APE's segment merge
// (DESIGN.md §3) and the weighted values, in plain vectorized loops over the cached
// keys. Through torch, a decode token cost about 15 small operations per layer, a few
// microseconds each: with 8 sequences that was a quarter of a step, more than the
// arithmetic; here a sequence costs about what reading its keys and values costs.
// Internal to model/ (torch types). Thread-safe for distinct caches.
#ifndef APESERVE_MODEL_DECODE_ATTENTION_H_
#define APESERVE_MODEL_DECODE_ATTENTION_H_

#include <torch/torch.h>

#include <cstdint>

#include "absl/types/span.h"
#include "model/attention.h"
#include "model/kv_cache.h"

namespace apeserve::model {

// One decoding sequence's token in a batch.
struct DecodeToken {
  KvCache* cache = nullptr;
  // Given, the token attends by APE's merge of its segments; else with one softmax over
  // every key (causal: they all precede it). Without held segments, the cache's first
  // prefix_length + context_length keys are APE's prefix and contexts; with them, the
  // segments say which are contexts and the cache holds the token's own keys only.
  const ApeLayout* ape = nullptr;
  int64_t row = 0;  // the token's row in q, k, v and the output
  // KV read in place before the cache (contiguous float32 tensors).
  absl::Span<const HeldSegment> held = {};
};

// Whether DecodeAttention computes a token on `device` in `dtype` with this head size
// and layout: the CPU, float32, head_dim a multiple of 8, APE's kernel kAuto.
bool DecodeAttentionApplies(const torch::Device& device, torch::ScalarType dtype, int64_t head_dim,
                            const ApeLayout* ape);

// For each token: appends its key and value (its rows of `k` and `v`, [N, kv_heads,
// head_dim]) to `layer` of its cache and writes its attention over that layer (its row
// of `q`, [N, heads, head_dim], scaled by 1 / sqrt(head_dim)) to its row of `output`
// ([N, heads, head_dim]). Equal, within float rounding, to KvCache::Append followed by
// CausalAttention, ApeAttention or AttendOverSegments. Caches must be distinct; q, k, v and output
// contiguous; DecodeAttentionApplies true for every token.
void DecodeAttention(size_t layer, const torch::Tensor& q, const torch::Tensor& k,
                     const torch::Tensor& v, absl::Span<const DecodeToken> tokens,
                     torch::Tensor& output);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_DECODE_ATTENTION_H_
