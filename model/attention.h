// Attention of new query tokens over a sequence's cached keys and values.
// Internal to model/ (torch types). Pure functions; thread-safe.
#ifndef APESERVE_MODEL_ATTENTION_H_
#define APESERVE_MODEL_ATTENTION_H_

#include <torch/torch.h>

namespace apeserve::model {

// Causal attention with grouped-query heads: `q` is [heads, T, head_dim] for the last T
// of the S = past + T positions in `k` and `v` ([kv_heads, S, head_dim]); query t sees
// keys 0 .. past + t. Returns [heads, T, head_dim].
torch::Tensor CausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_ATTENTION_H_
