// The tensors of a GGUF file as a WeightSource.
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "model/gguf_file.h"
#include "model/llama_weights.h"

namespace apeserve::model {
namespace {

// llama.cpp's converter interleaves the two halves of each head's rotary dimensions
// ([h, 2, d/2] -> [h, d/2, 2]); this undoes it so one rotary formula serves GGUF and
// Hugging Face weights alike.
torch::Tensor UninterleaveHeads(const torch::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0);
  return w
      .reshape({heads, rows / heads / 2, 2, -1})  // [h, d/2, 2, in]
      .transpose(1, 2)                            // [h, 2, d/2, in]
      .reshape(w.sizes());
}

// Hugging Face names -> llama.cpp's.
std::string GgufName(const std::string& name) {
  static const auto* kGlobal = new absl::flat_hash_map<std::string, std::string>{
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
      {"rope_freqs", "rope_freqs.weight"}};
  static const auto* kLayer = new absl::flat_hash_map<std::string, std::string>{
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"}};
  if (const auto it = kGlobal->find(name); it != kGlobal->end()) return it->second;
  // model.layers.<i>.<rest>
  const std::vector<std::string> parts = absl::StrSplit(name, absl::MaxSplits('.', 3));
  int layer = 0;
  if (parts.size() == 4 && parts[0] == "model" && parts[1] == "layers" &&
      absl::SimpleAtoi(parts[2], &layer)) {
    if (const auto it = kLayer->find(parts[3]); it != kLayer->end()) {
      return absl::StrCat("blk.", layer, ".", it->second);
    }
  }
  return name;
}

class GgufSource final : public WeightSource {
 public:
  // The config is copied: the source may outlive (or move with) the caller's.
  GgufSource(const GgufFile& file, ModelConfig config) : file_(file), config_(std::move(config)) {}

  bool Has(const std::string& name) const override {
    return file_.FindTensor(GgufName(name)) != nullptr;
  }

  absl::StatusOr<torch::Tensor> Read(const std::string& name,
                                     const std::vector<int64_t>& shape) const override {
    const std::string gguf_name = GgufName(name);
    const GgufTensor* tensor = file_.FindTensor(gguf_name);
    APE_RETURN_IF_ERROR(CheckTensor(absl::StrCat("model file '", file_.path(), "'"), gguf_name,
                                    tensor != nullptr, tensor ? tensor->shape : shape, shape));
    torch::Tensor values = torch::empty(shape, torch::kFloat32);
    APE_RETURN_IF_ERROR(Dequantize(tensor->type->type, tensor->bytes, tensor->element_count,
                                   values.data_ptr<float>()));
    if (config_.architecture != "qwen2") {
      if (absl::EndsWith(name, "q_proj.weight"))
        return UninterleaveHeads(values, config_.num_heads);
      if (absl::EndsWith(name, "k_proj.weight")) {
        return UninterleaveHeads(values, config_.num_kv_heads);
      }
    }
    return values;
  }

 private:
  const GgufFile& file_;
  const ModelConfig config_;
};

}  // namespace

std::unique_ptr<WeightSource> GgufWeightSource(const GgufFile& file, const ModelConfig& config) {
  return std::make_unique<GgufSource>(file, config);
}

}  // namespace apeserve::model
