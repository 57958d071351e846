// Attention of new query tokens over a sequence's cached keys and values: causal
// attention over one sequence (SEQUENTIAL and PARALLEL), and APE's merge of three
// segments (DESIGN.md §3). Internal to model/ (torch types). Pure functions; thread-safe.
#ifndef APESERVE_MODEL_ATTENTION_H_
#define APESERVE_MODEL_ATTENTION_H_

#include <torch/torch.h>

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
