#include "model/llama_model.h"

#include <cmath>
#include <numbers>
#include <utility>
#include <vector>

#include "model/attention.h"
#include "model/decode_attention.h"
#include "model/prompt_attention.h"

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

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, LlamaWeights weights, torch::Device device,
                       torch::ScalarType dtype)
    : config_(std::move(config)), weights_(std::move(weights)), device_(device), dtype_(dtype) {
  if (device_.is_cpu()) {
    kv_pool_ = std::make_shared<KvBufferPool>(torch::TensorOptions().device(device_).dtype(dtype_));
  }
  inverse_frequencies_ = InverseFrequencies(config_, weights_.rope_freq_factors).to(device_);
  // Moved out of weights_, so that a packed weight does not keep its plain copy too.
  const auto take = [](torch::Tensor& weight, torch::Tensor& bias) {
    return PackedLinear(std::exchange(weight, {}), std::exchange(bias, {}), /*pack=*/true);
  };
  torch::Tensor none;
  for (LayerWeights& w : weights_.layers) {
    linears_.push_back({.q = take(w.wq, w.bq),
                        .k = take(w.wk, w.bk),
                        .v = take(w.wv, w.bv),
                        .o = take(w.wo, none),
                        .gate = take(w.w_gate, none),
                        .up = take(w.w_up, none),
                        .down = take(w.w_down, none)});
  }
  // The output may share its weight with the embedding, which stays plain.
  output_ = take(weights_.output, none);
}

KvCache LlamaModel::NewCache() const {
  return KvCache(config_.num_layers, config_.num_kv_heads, config_.head_dim,
                 torch::TensorOptions().device(device_).dtype(dtype_), kv_pool_);
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

torch::Tensor LlamaModel::Forward(absl::Span<const SequenceInput> inputs) const {
  c10::InferenceMode inference;  // no autograd bookkeeping: cheaper small operations
  const int64_t heads = config_.num_heads, kv_heads = config_.num_kv_heads, d = config_.head_dim;

  // All inputs' tokens, positions and the rows whose logits are wanted, gathered on the
  // host and moved to the device in one copy each.
  std::vector<int64_t> ids, positions, logit_rows;
  std::vector<int64_t> offsets;  // where each input's tokens start among all of them
  for (const SequenceInput& input : inputs) {
    const auto offset = static_cast<int64_t>(ids.size());
    const auto count = static_cast<int64_t>(input.tokens.size());
    offsets.push_back(offset);
    ids.insert(ids.end(), input.tokens.begin(), input.tokens.end());
    for (int64_t t = 0; t < count; ++t) positions.push_back(input.first_position + t);
    if (input.logits == Logits::kAll) {
      for (int64_t t = 0; t < count; ++t) logit_rows.push_back(offset + t);
    } else if (input.logits == Logits::kLast) {
      logit_rows.push_back(offset + count - 1);
    }
  }
  const auto total = static_cast<int64_t>(ids.size());

  // Rotary angles of the new tokens: [N, 1, head_dim] to broadcast over heads.
  const torch::Tensor angles =
      torch::tensor(positions, torch::kInt64).to(device_, torch::kFloat32).unsqueeze(1) *
      inverse_frequencies_.unsqueeze(0);
  const torch::Tensor both = torch::cat({angles, angles}, -1).unsqueeze(1);
  const torch::Tensor cos = both.cos().to(dtype_), sin = both.sin().to(dtype_);

  torch::Tensor x = weights_.token_embedding.index_select(
      0, torch::tensor(ids, torch::kInt64).to(device_));  // [N, hidden]
  // Inputs that decode one token through the batched decode attention; the rest attend
  // one by one through torch.
  std::vector<DecodeToken> decoding;
  std::vector<size_t> others;
  for (size_t s = 0; s < inputs.size(); ++s) {
    const SequenceInput& input = inputs[s];
    if (input.tokens.size() == 1 && DecodeAttentionApplies(device_, dtype_, d, input.ape)) {
      decoding.push_back(
          {.cache = input.cache, .ape = input.ape, .row = offsets[s], .held = input.held});
    } else {
      others.push_back(s);
    }
  }
  for (size_t i = 0; i < weights_.layers.size(); ++i) {
    const LayerWeights& w = weights_.layers[i];
    const LayerLinears& linear = linears_[i];

    // Attention block: projections for all tokens at once, attention per sequence.
    const torch::Tensor h = RmsNorm(x, w.attention_norm);
    const torch::Tensor q = Rotate(linear.q.Apply(h).view({total, heads, d}), cos, sin);
    const torch::Tensor k = Rotate(linear.k.Apply(h).view({total, kv_heads, d}), cos, sin);
    const torch::Tensor v = linear.v.Apply(h).view({total, kv_heads, d});
    torch::Tensor joined = torch::empty({total, heads, d}, q.options());  // [N, H, D]
    if (!decoding.empty()) DecodeAttention(i, q, k, v, decoding, joined);
    for (const size_t s : others) {
      const SequenceInput& input = inputs[s];
      const auto count = static_cast<int64_t>(input.tokens.size());
      const auto [keys, values] =
          input.cache->Append(i, k.narrow(0, offsets[s], count).transpose(0, 1),
                              v.narrow(0, offsets[s], count).transpose(0, 1));  // [Hkv, S, D]
      // What the sequence reads in place (its held segments, or an APE cache's prefix and
      // contexts), then its own keys.
      const ApeLayout* ape = input.ape;
      std::vector<KeySegment> held;
      torch::Tensor own_keys = keys, own_values = values;
      if (!input.held.empty()) {
        held.reserve(input.held.size());
        for (const HeldSegment& segment : input.held) {
          held.push_back(
              {.keys = segment.keys[i], .values = segment.values[i], .contexts = segment.contexts});
        }
      } else if (ape != nullptr) {
        ApeCacheSegments split = SplitApeCache(keys, values, *ape);
        held.assign(std::begin(split.held), std::end(split.held));
        own_keys = std::move(split.local_keys);
        own_values = std::move(split.local_values);
      }
      torch::Tensor rows = joined.narrow(0, offsets[s], count);  // [T, H, D]
      if (PromptAttentionApplies(device_, dtype_, heads, kv_heads, d, ape)) {
        PromptAttention(q.narrow(0, offsets[s], count), held, own_keys, own_values, ape, rows);
        continue;
      }
      const torch::Tensor q_s = q.narrow(0, offsets[s], count).transpose(0, 1);  // [H, T, D]
      const torch::Tensor attended =
          held.empty() ? CausalAttention(q_s, keys, values)
                       : AttendOverSegments(q_s, held, own_keys, own_values, ape,
                                            ape != nullptr ? ape->kernel : AttentionKernel::kAuto,
                                            ape != nullptr ? ape->block : ApeLayout().block);
      rows.copy_(attended.transpose(0, 1));  // [T, H, D]
    }
    x = x + linear.o.Apply(joined.reshape({total, heads * d}));

    // Feed-forward block (SwiGLU).
    const torch::Tensor g = RmsNorm(x, w.ffn_norm);
    x = x + linear.down.Apply(F::silu(linear.gate.Apply(g)) * linear.up.Apply(g));
  }
  if (logit_rows.empty()) return torch::empty({0, config_.vocab_size}, torch::kFloat32);
  x = x.index_select(0, torch::tensor(logit_rows, torch::kInt64).to(device_));
  return output_.Apply(RmsNorm(x, weights_.output_norm))
      .to(torch::kFloat32)
      .to(torch::kCPU)
      .contiguous();
}

}  // namespace apeserve::model
