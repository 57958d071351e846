// Attention that also returns the log-sum-exp of its logits, so that the outputs of
// attention over separate key segments can be merged exactly: the building block of
// APE (DESIGN.md §3). Internal to model/ (torch types). Pure functions; thread-safe.
#ifndef APESERVE_MODEL_ATTENTION_LSE_H_
#define APESERVE_MODEL_ATTENTION_LSE_H_

#include <torch/torch.h>

#include <vector>

namespace apeserve::model {

enum class AttentionKernel {
  // A fused libtorch kernel that returns the log-sum-exp where the device has one for
  // the case (CPU: always; CUDA: segments without a causal mask), else kBlocked.
  kAuto,
  // Matmul and log-sum-exp over key blocks with a running merge; memory stays
  // proportional to queries x block, whatever the segment's length.
  kBlocked,
};

// One segment's contribution: the attention output and the log-sum-exp of the scaled
// logits (the log of the softmax denominator), both fp32.
struct PartialAttention {
  torch::Tensor output;  // [heads, T, head_dim]
  torch::Tensor lse;     // [heads, T]; -inf for a query that sees no key
};

// Attention of `q` ([heads, T, head_dim]) over `k`, `v` ([kv_heads, S, head_dim], kv_heads
// dividing heads; head h reads kv head h / (heads / kv_heads)) with logits
// `scale` * q·k. With `causal`, query t sees keys 0 .. S - T + t (the queries are the
// segment's last T tokens); otherwise every key. `block` is the key block of kBlocked.
PartialAttention AttendWithLse(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, double scale, bool causal,
                               AttentionKernel kernel, int64_t block);

// Attention over the union of the segments behind `parts`: outputs weighted by
// softmax over their log-sum-exps, and the log-sum-exp of the union.
PartialAttention MergeByLse(const std::vector<PartialAttention>& parts);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_ATTENTION_LSE_H_
