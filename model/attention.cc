#include "model/attention.h"

#include <cmath>
#include <utility>
#include <vector>

namespace apeserve::model {

torch::Tensor CausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v) {
  const int64_t queries = q.size(1), keys = k.size(1), past = keys - queries;
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2)));
  if (queries == 1) {  // decoding: the one query sees every key, no mask to build
    return at::scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                            /*attn_mask=*/std::nullopt, /*dropout_p=*/0.0,
                                            /*is_causal=*/false, scale, /*enable_gqa=*/true)
        .squeeze(0);
  }
  // Query t (absolute position past + t) may see key j when j <= past + t.
  const auto options = torch::TensorOptions().device(q.device()).dtype(torch::kInt64);
  const torch::Tensor key_index = torch::arange(keys, options).unsqueeze(0);              // [1, S]
  const torch::Tensor query_index = torch::arange(queries, options).unsqueeze(1) + past;  // [T, 1]
  const torch::Tensor visible = key_index <= query_index;                                 // [T, S]
  return at::scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), visible,
                                          /*dropout_p=*/0.0, /*is_causal=*/false, scale,
                                          /*enable_gqa=*/true)
      .squeeze(0);  // [heads, T, head_dim]
}

torch::Tensor AttendOverSegments(const torch::Tensor& q, absl::Span<const KeySegment> held,
                                 const torch::Tensor& local_keys, const torch::Tensor& local_values,
                                 const ApeLayout* ape, AttentionKernel kernel, int64_t block) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2)));
  std::vector<PartialAttention> parts, contexts;
  for (const KeySegment& segment : held) {
    if (segment.keys.size(1) == 0) continue;
    const bool apart = ape != nullptr && segment.contexts;
    // softmax(a / T) is attention with the scale divided by T.
    (apart ? contexts : parts)
        .push_back(AttendWithLse(q, segment.keys, segment.values,
                                 apart ? scale / ape->temperature : scale,
                                 /*causal=*/false, kernel, block));
  }
  if (!contexts.empty()) {
    // The contexts' log-sum-exp is logsumexp(a / T) over all of them, which APE
    // multiplies by T and then by S (the published form) or shifts by ln S (the
    // additive one). The lse is fp32, so is this arithmetic.
    PartialAttention merged = MergeByLse(contexts);
    switch (ape->form) {
      case ApeScaleForm::kMultiplicative:
        merged.lse = merged.lse * (ape->scale * ape->temperature);
        break;
      case ApeScaleForm::kAdditive:
        merged.lse = merged.lse * ape->temperature + std::log(ape->scale);
        break;
    }
    parts.push_back(std::move(merged));
  }
  parts.push_back(
      AttendWithLse(q, local_keys, local_values, scale, /*causal=*/true, kernel, block));
  return MergeByLse(parts).output.to(q.scalar_type());
}

ApeCacheSegments SplitApeCache(const torch::Tensor& k, const torch::Tensor& v,
                               const ApeLayout& layout) {
  const int64_t prefix = layout.prefix_length, contexts = layout.context_length;
  const int64_t local = k.size(1) - prefix - contexts;
  return {.held = {{.keys = k.narrow(1, 0, prefix), .values = v.narrow(1, 0, prefix)},
                   {.keys = k.narrow(1, prefix, contexts),
                    .values = v.narrow(1, prefix, contexts),
                    .contexts = true}},
          .local_keys = k.narrow(1, prefix + contexts, local),
          .local_values = v.narrow(1, prefix + contexts, local)};
}

torch::Tensor ApeAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const ApeLayout& layout) {
  const ApeCacheSegments split = SplitApeCache(k, v, layout);
  return AttendOverSegments(q, split.held, split.local_keys, split.local_values, &layout,
                            layout.kernel, layout.block);
}

}  // namespace apeserve::model
