#include "model/llama_model.h"

#include <cmath>
#include <numbers>
#include <utility>

#include "model/attention.h"

namespace apeserve::model {
namespace {

namespace F = torch::nn::functional;

// Inverse rotary frequencies theta^(-2i/d), with the model's long-context rescaling.
// Computed in fp32 as transformers does, so positions map to the same angles.
torch::Tensor InverseFrequencies(const ModelConfig& config, const torch::Tensor& freq_factors) {
  const int64_t dim = config.head_dim;
  torch::Tensor exponents = torch::arange(0, dim, 2, torch::kInt64).to(torch::kFloat32) / dim;
  torch::Tensor inv = 1.0 / torch::pow(config.rope_theta, exponents);  // [dim / 2]
  const RopeScaling& s = config.rope_scaling;
  switch (s.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:
      inv = inv / s.factor;
      break;
    case RopeScaling::Type::kLlama3: {
      // Long wavelengths are slowed by `factor`, short ones kept, the band between
      // blended smoothly (Llama 3.1's scheme).
      const double old_context = static_cast<double>(s.original_max_position);
      const double low_wavelen = old_context / s.low_freq_factor;
      const double high_wavelen = old_context / s.high_freq_factor;
      const torch::Tensor wavelen = 2 * std::numbers::pi / inv;
      torch::Tensor scaled = torch::where(wavelen > low_wavelen, inv / s.factor, inv);
      const torch::Tensor smooth =
          (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      const torch::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
      const torch::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
      inv = torch::where(medium, smoothed, scaled);
      break;
    }
  }
  if (freq_factors.defined()) inv = inv / freq_factors.to(torch::kCPU, torch::kFloat32);
  return inv;
}

torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {}) {
  return b.defined() ? torch::addmm(b, x, w.t()) : torch::mm(x, w.t());
}

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, LlamaWeights weights, torch::Device device,
                       torch::ScalarType dtype)
    : config_(std::move(config)), weights_(std::move(weights)), device_(device), dtype_(dtype) {
  inverse_frequencies_ = InverseFrequencies(config_, weights_.rope_freq_factors).to(device_);
}

KvCache LlamaModel::NewCache() const {
  return KvCache(config_.num_layers, config_.num_kv_heads, config_.head_dim,
                 torch::TensorOptions().device(device_).dtype(dtype_));
}

torch::Tensor LlamaModel::RmsNorm(const torch::Tensor& x, const torch::Tensor& weight) const {
  const torch::Tensor x32 = x.to(torch::kFloat32);
  const torch::Tensor normed = x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + config_.rms_norm_eps);
  return weight * normed.to(dtype_);
}

torch::Tensor LlamaModel::Rotate(const torch::Tensor& x, const torch::Tensor& cos,
                                 const torch::Tensor& sin) const {
  const int64_t half = config_.head_dim / 2;
  const torch::Tensor rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

torch::Tensor LlamaModel::Forward(const torch::Tensor& tokens, const torch::Tensor& positions,
                                  KvCache& cache, Logits logits, const ApeLayout* ape) const {
  torch::NoGradGuard no_grad;
  const int64_t count = tokens.size(0);
  const int64_t heads = config_.num_heads, kv_heads = config_.num_kv_heads, d = config_.head_dim;

  // Rotary angles of the new tokens: [T, 1, head_dim] to broadcast over heads.
  const torch::Tensor angles =
      positions.to(device_, torch::kFloat32).unsqueeze(1) * inverse_frequencies_.unsqueeze(0);
  const torch::Tensor both = torch::cat({angles, angles}, -1).unsqueeze(1);
  const torch::Tensor cos = both.cos().to(dtype_), sin = both.sin().to(dtype_);

  torch::Tensor x = weights_.token_embedding.index_select(0, tokens.to(device_));  // [T, hidden]
  for (size_t i = 0; i < weights_.layers.size(); ++i) {
    const LayerWeights& w = weights_.layers[i];

    // Attention block.
    const torch::Tensor h = RmsNorm(x, w.attention_norm);
    torch::Tensor q = Linear(h, w.wq, w.bq).view({count, heads, d});     // [T, H, D]
    torch::Tensor k = Linear(h, w.wk, w.bk).view({count, kv_heads, d});  // [T, Hkv, D]
    const torch::Tensor v = Linear(h, w.wv, w.bv).view({count, kv_heads, d});
    q = Rotate(q, cos, sin);
    k = Rotate(k, cos, sin);
    const auto [keys, values] =
        cache.Append(i, k.transpose(0, 1), v.transpose(0, 1));  // [Hkv, S, D]
    const torch::Tensor attended =
        ape != nullptr ? ApeAttention(q.transpose(0, 1), keys, values, *ape)
                       : CausalAttention(q.transpose(0, 1), keys, values);  // [H, T, D]
    x = x + Linear(attended.transpose(0, 1).reshape({count, heads * d}), w.wo);

    // Feed-forward block (SwiGLU).
    const torch::Tensor g = RmsNorm(x, w.ffn_norm);
    x = x + Linear(F::silu(Linear(g, w.w_gate)) * Linear(g, w.w_up), w.w_down);
  }
  if (logits == Logits::kNone) return {};
  if (logits == Logits::kLast) x = x.narrow(0, count - 1, 1);
  return Linear(RmsNorm(x, weights_.output_norm), weights_.output).to(torch::kFloat32);
}

}  // namespace apeserve::model
