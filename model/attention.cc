#include "model/attention.h"

#include <cmath>

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

torch::Tensor ApeAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const ApeLayout& layout) {
  const int64_t prefix = layout.prefix_length, contexts = layout.context_length;
  const int64_t local = k.size(1) - prefix - contexts;
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2)));
  const auto segment = [&](int64_t start, int64_t length, double logit_scale, bool causal) {
    return AttendWithLse(q, k.narrow(1, start, length), v.narrow(1, start, length), logit_scale,
                         causal, layout.kernel, layout.block);
  };
  std::vector<PartialAttention> parts;
  if (prefix > 0) parts.push_back(segment(0, prefix, scale, /*causal=*/false));
  if (contexts > 0) {
    // softmax(a / T) is attention with the scale divided by T; its log-sum-exp is
    // logsumexp(a / T), which APE multiplies by T and then by S (the published form) or
    // shifts by ln S (the additive one). The lse is fp32, so is this arithmetic.
    PartialAttention context =
        segment(prefix, contexts, scale / layout.temperature, /*causal=*/false);
    switch (layout.form) {
      case ApeScaleForm::kMultiplicative:
        context.lse = context.lse * (layout.scale * layout.temperature);
        break;
      case ApeScaleForm::kAdditive:
        context.lse = context.lse * layout.temperature + std::log(layout.scale);
        break;
    }
    parts.push_back(std::move(context));
  }
  parts.push_back(segment(prefix + contexts, local, scale, /*causal=*/true));
  return MergeByLse(parts).output.to(q.scalar_type());
}

}  // namespace apeserve::model
