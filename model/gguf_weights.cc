// Loading LlamaWeights from a GGUF file.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/gguf_file.h"
#include "model/llama_weights.h"

namespace apeserve::model {
namespace {

class GgufWeightReader {
 public:
  GgufWeightReader(const GgufFile& file, torch::Device device, torch::ScalarType dtype)
      : file_(file), device_(device), dtype_(dtype) {}

  // The tensor `name`, dequantized, of exactly `shape`.
  absl::StatusOr<torch::Tensor> Read(const std::string& name, std::vector<int64_t> shape) const {
    const GgufTensor* tensor = file_.FindTensor(name);
    if (tensor == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("model file '", file_.path(), "' has no tensor '", name, "'"));
    }
    if (tensor->shape != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' has shape [", absl::StrJoin(tensor->shape, ", "),
                       "]; the model config needs [", absl::StrJoin(shape, ", "), "]"));
    }
    torch::Tensor values = torch::empty(shape, torch::kFloat32);
    APE_RETURN_IF_ERROR(Dequantize(tensor->type->type, tensor->bytes, tensor->element_count,
                                   values.data_ptr<float>()));
    return values;
  }

  absl::StatusOr<torch::Tensor> ReadOptional(const std::string& name,
                                             std::vector<int64_t> shape) const {
    if (file_.FindTensor(name) == nullptr) return torch::Tensor();
    return Read(name, std::move(shape));
  }

  torch::Tensor ToDevice(const torch::Tensor& t) const {
    return t.defined() ? t.to(device_, dtype_).contiguous() : t;
  }

 private:
  const GgufFile& file_;
  torch::Device device_;
  torch::ScalarType dtype_;
};

// llama.cpp's converter interleaves the two halves of each head's rotary dimensions
// ([h, 2, d/2] -> [h, d/2, 2]); this undoes it so one rotary formula serves GGUF and
// Hugging Face weights alike.
torch::Tensor UninterleaveHeads(const torch::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0);
  return w
      .reshape({heads, rows / heads / 2, 2, w.size(1)})  // [h, d/2, 2, in]
      .transpose(1, 2)                                   // [h, 2, d/2, in]
      .reshape({rows, w.size(1)});
}

}  // namespace

absl::StatusOr<LlamaWeights> LoadGgufWeights(const GgufFile& file, const ModelConfig& config,
                                             torch::Device device, torch::ScalarType dtype) {
  const GgufWeightReader reader(file, device, dtype);
  const int64_t hidden = config.hidden_size, vocab = config.vocab_size;
  const int64_t q_rows = config.num_heads * config.head_dim;
  const int64_t kv_rows = config.num_kv_heads * config.head_dim;
  const bool interleaved = config.architecture != "qwen2";

  LlamaWeights weights;
  APE_ASSIGN_OR_RETURN(torch::Tensor embedding, reader.Read("token_embd.weight", {vocab, hidden}));
  weights.token_embedding = reader.ToDevice(embedding);
  APE_ASSIGN_OR_RETURN(torch::Tensor norm, reader.Read("output_norm.weight", {hidden}));
  weights.output_norm = reader.ToDevice(norm);
  if (config.tie_word_embeddings) {
    weights.output = weights.token_embedding;
  } else {
    APE_ASSIGN_OR_RETURN(torch::Tensor output, reader.Read("output.weight", {vocab, hidden}));
    weights.output = reader.ToDevice(output);
  }
  APE_ASSIGN_OR_RETURN(torch::Tensor rope_freqs,
                       reader.ReadOptional("rope_freqs.weight", {config.head_dim / 2}));
  weights.rope_freq_factors = rope_freqs.defined() ? rope_freqs.to(device) : rope_freqs;

  weights.layers.resize(static_cast<size_t>(config.num_layers));
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("blk.", i, ".");
    LayerWeights& layer = weights.layers[static_cast<size_t>(i)];
    APE_ASSIGN_OR_RETURN(torch::Tensor attention_norm,
                         reader.Read(p + "attn_norm.weight", {hidden}));
    APE_ASSIGN_OR_RETURN(torch::Tensor wq, reader.Read(p + "attn_q.weight", {q_rows, hidden}));
    APE_ASSIGN_OR_RETURN(torch::Tensor wk, reader.Read(p + "attn_k.weight", {kv_rows, hidden}));
    APE_ASSIGN_OR_RETURN(torch::Tensor wv, reader.Read(p + "attn_v.weight", {kv_rows, hidden}));
    APE_ASSIGN_OR_RETURN(torch::Tensor wo, reader.Read(p + "attn_output.weight", {hidden, q_rows}));
    APE_ASSIGN_OR_RETURN(torch::Tensor ffn_norm, reader.Read(p + "ffn_norm.weight", {hidden}));
    APE_ASSIGN_OR_RETURN(torch::Tensor gate,
                         reader.Read(p + "ffn_gate.weight", {config.intermediate_size, hidden}));
    APE_ASSIGN_OR_RETURN(torch::Tensor up,
                         reader.Read(p + "ffn_up.weight", {config.intermediate_size, hidden}));
    APE_ASSIGN_OR_RETURN(torch::Tensor down,
                         reader.Read(p + "ffn_down.weight", {hidden, config.intermediate_size}));
    if (interleaved) {
      wq = UninterleaveHeads(wq, config.num_heads);
      wk = UninterleaveHeads(wk, config.num_kv_heads);
    }
    layer.attention_norm = reader.ToDevice(attention_norm);
    layer.wq = reader.ToDevice(wq);
    layer.wk = reader.ToDevice(wk);
    layer.wv = reader.ToDevice(wv);
    layer.wo = reader.ToDevice(wo);
    layer.ffn_norm = reader.ToDevice(ffn_norm);
    layer.w_gate = reader.ToDevice(gate);
    layer.w_up = reader.ToDevice(up);
    layer.w_down = reader.ToDevice(down);
    if (config.attention_bias) {
      APE_ASSIGN_OR_RETURN(torch::Tensor bq, reader.Read(p + "attn_q.bias", {q_rows}));
      APE_ASSIGN_OR_RETURN(torch::Tensor bk, reader.Read(p + "attn_k.bias", {kv_rows}));
      APE_ASSIGN_OR_RETURN(torch::Tensor bv, reader.Read(p + "attn_v.bias", {kv_rows}));
      layer.bq = reader.ToDevice(bq);
      layer.bk = reader.ToDevice(bk);
      layer.bv = reader.ToDevice(bv);
    }
  }
  return weights;
}

}  // namespace apeserve::model
