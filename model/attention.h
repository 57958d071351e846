// Attention of new query tokens over a sequence's cached keys and values: causal
// attention over one sequence (SEQUENTIAL and PARALLEL), and APE's merge of three
// segments (DESIGN.md §3). Internal to model/ (torch types). Pure functions; thread-safe.
#ifndef APESERVE_MODEL_ATTENTION_H_
#define APESERVE_MODEL_ATTENTION_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "model/ape_options.h"
#include "model/attention_lse.h"

namespace apeserve::model {

// Causal attention with grouped-query heads: `q` is [heads, T, head_dim] for the last T
// of the S = past + T positions in `k` and `v` ([kv_heads, S, head_dim]); query t sees
// keys 0 .. past + t. Returns [heads, T, head_dim].
torch::Tensor CausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v);

// How an APE sequence's cache is laid out and attended: keys [0, prefix_length) are the
// prefix, the next context_length keys all contexts side by side, the rest the query's
// and generated tokens ("local", ending with the T queries).
struct ApeLayout {
  int64_t prefix_length = 0;
  int64_t context_length = 0;
  double temperature = 1.0;  // T
  double scale = 1.0;        // S
  ApeScaleForm form = ApeScaleForm::kMultiplicative;
  AttentionKernel kernel = AttentionKernel::kAuto;
  int64_t block = 1024;  // keys per block of AttentionKernel::kBlocked
};

// KV a sequence reads where it lies rather than in its own cache: a shared prefix or a
// stored context (DESIGN.md §3), per layer K and V as [kv_heads, length, head_dim].
struct HeldSegment {
  std::vector<torch::Tensor> keys = {};    // per layer
  std::vector<torch::Tensor> values = {};  // per layer
  int64_t length = 0;
  // APE's contexts: a softmax of their own, read with 1/T and weighed by S. Otherwise
  // (the prefix; every segment outside APE) the keys join the plain softmax.
  bool contexts = false;
};

// One layer of a HeldSegment.
struct KeySegment {
  torch::Tensor keys = {};    // [kv_heads, length, head_dim]
  torch::Tensor values = {};  // [kv_heads, length, head_dim]
  bool contexts = false;
};

// Attention of `q` ([heads, T, head_dim]) over every key of `held` and then, causally,
// over `local_keys`, `local_values` ([kv_heads, S, head_dim], the queries its last T).
// With `ape`, the contexts' segments form APE's contexts softmax (ApeAttention's
// equations; `ape`'s lengths are not used), without it every key is in one softmax.
// Segments are attended one by one and merged by their log-sum-exps, so no segment is
// copied. `kernel`, `block`: as AttendWithLse's. Returns [heads, T, head_dim] in q's dtype.
torch::Tensor AttendOverSegments(const torch::Tensor& q, absl::Span<const KeySegment> held,
                                 const torch::Tensor& local_keys, const torch::Tensor& local_values,
                                 const ApeLayout* ape, AttentionKernel kernel, int64_t block);

// A cache laid out as `layout` says (keys [0, prefix) the prefix, the next
// context_length the contexts, the rest the sequence's own) as AttendOverSegments reads
// it: views, no copy.
struct ApeCacheSegments {
  KeySegment held[2];  // the prefix, then the contexts
  torch::Tensor local_keys, local_values;
};
ApeCacheSegments SplitApeCache(const torch::Tensor& k, const torch::Tensor& v,
                               const ApeLayout& layout);

// APE attention of `q` ([heads, T, head_dim]) over `k`, `v` ([kv_heads, S, head_dim]):
//   prefix:   LSE_P = logsumexp(a_P),                 o_P = softmax(a_P) V_P
//   contexts: LSE_C = S T logsumexp(a_C / T)          o_C = softmax(a_C / T) V_C
//             (kAdditive: T logsumexp(a_C / T) + ln S)
//   local:    causal, LSE_Q and o_Q
//   o = sum over segments of softmax([LSE_P, LSE_C, LSE_Q]) o_segment
// with a = q·k / sqrt(head_dim). The log-sum-exps and the merge are fp32 whatever q's
// dtype. Returns [heads, T, head_dim] in q's dtype.
torch::Tensor ApeAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const ApeLayout& layout);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_ATTENTION_H_
