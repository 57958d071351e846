#include "model/llama_weights.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace apeserve::model {

absl::Status CheckTensor(absl::string_view where, absl::string_view name, bool found,
                         const std::vector<int64_t>& actual, const std::vector<int64_t>& expected) {
  if (!found) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has no tensor '", name, "'"));
  }
  if (actual != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' has shape [", absl::StrJoin(actual, ", "),
                     "]; the model config needs [", absl::StrJoin(expected, ", "), "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const WeightSource& source, const ModelConfig& config,
                                              torch::Device device, torch::ScalarType dtype) {
  const int64_t hidden = config.hidden_size, vocab = config.vocab_size;
  const int64_t inter = config.intermediate_size;
  const int64_t q_rows = config.num_heads * config.head_dim;
  const int64_t kv_rows = config.num_kv_heads * config.head_dim;
  // Each tensor goes to the device as soon as it is read, so host memory holds one
  // fp32 tensor at a time.
  const auto load = [&](const std::string& name,
                        const std::vector<int64_t>& shape) -> absl::StatusOr<torch::Tensor> {
    APE_ASSIGN_OR_RETURN(torch::Tensor t, source.Read(name, shape));
    return t.to(device, dtype).contiguous();
  };

  LlamaWeights w;
  APE_ASSIGN_OR_RETURN(w.token_embedding, load("model.embed_tokens.weight", {vocab, hidden}));
  APE_ASSIGN_OR_RETURN(w.output_norm, load("model.norm.weight", {hidden}));
  if (config.tie_word_embeddings) {
    w.output = w.token_embedding;
  } else {
    APE_ASSIGN_OR_RETURN(w.output, load("lm_head.weight", {vocab, hidden}));
  }
  if (source.Has("rope_freqs")) {
    APE_ASSIGN_OR_RETURN(w.rope_freq_factors, source.Read("rope_freqs", {config.head_dim / 2}));
  }
  w.layers.resize(static_cast<size_t>(config.num_layers));
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    LayerWeights& l = w.layers[static_cast<size_t>(i)];
    APE_ASSIGN_OR_RETURN(l.attention_norm, load(p + "input_layernorm.weight", {hidden}));
    APE_ASSIGN_OR_RETURN(l.wq, load(p + "self_attn.q_proj.weight", {q_rows, hidden}));
    APE_ASSIGN_OR_RETURN(l.wk, load(p + "self_attn.k_proj.weight", {kv_rows, hidden}));
    APE_ASSIGN_OR_RETURN(l.wv, load(p + "self_attn.v_proj.weight", {kv_rows, hidden}));
    APE_ASSIGN_OR_RETURN(l.wo, load(p + "self_attn.o_proj.weight", {hidden, q_rows}));
    if (config.attention_bias) {
      APE_ASSIGN_OR_RETURN(l.bq, load(p + "self_attn.q_proj.bias", {q_rows}));
      APE_ASSIGN_OR_RETURN(l.bk, load(p + "self_attn.k_proj.bias", {kv_rows}));
      APE_ASSIGN_OR_RETURN(l.bv, load(p + "self_attn.v_proj.bias", {kv_rows}));
    }
    APE_ASSIGN_OR_RETURN(l.ffn_norm, load(p + "post_attention_layernorm.weight", {hidden}));
    APE_ASSIGN_OR_RETURN(l.w_gate, load(p + "mlp.gate_proj.weight", {inter, hidden}));
    APE_ASSIGN_OR_RETURN(l.w_up, load(p + "mlp.up_proj.weight", {inter, hidden}));
    APE_ASSIGN_OR_RETURN(l.w_down, load(p + "mlp.down_proj.weight", {hidden, inter}));
  }
  return w;
}

}  // namespace apeserve::model
