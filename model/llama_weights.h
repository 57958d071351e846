// The parameters of a Llama-family model as torch tensors on the compute device.
// Internal to model/: this header carries torch types.
#ifndef APESERVE_MODEL_LLAMA_WEIGHTS_H_
#define APESERVE_MODEL_LLAMA_WEIGHTS_H_

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model_config.h"

namespace apeserve::model {

class GgufFile;
class HfCheckpoint;

// Where the parameters come from. Names are Hugging Face's ("model.norm.weight");
// each source maps them to its own and returns fp32 CPU tensors in Hugging Face's
// layout. Read() gives INVALID_ARGUMENT for a missing tensor or a wrong shape.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool Has(const std::string& name) const = 0;
  virtual absl::StatusOr<torch::Tensor> Read(const std::string& name,
                                             const std::vector<int64_t>& shape) const = 0;
};

struct LayerWeights {
  torch::Tensor attention_norm;  // [hidden]
  torch::Tensor wq;              // [heads * head_dim, hidden]
  torch::Tensor wk;              // [kv_heads * head_dim, hidden]
  torch::Tensor wv;              // [kv_heads * head_dim, hidden]
  torch::Tensor wo;              // [hidden, heads * head_dim]
  torch::Tensor bq, bk, bv;      // [out]; undefined unless config.attention_bias
  torch::Tensor ffn_norm;        // [hidden]
  torch::Tensor w_gate;          // [intermediate, hidden]
  torch::Tensor w_up;            // [intermediate, hidden]
  torch::Tensor w_down;          // [hidden, intermediate]
};

struct LlamaWeights {
  torch::Tensor token_embedding;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  torch::Tensor output_norm;  // [hidden]
  torch::Tensor output;       // [vocab, hidden]; the embedding itself when tied
  // Per-frequency divisors of the rotary inverse frequencies (llama.cpp's rope_freqs,
  // how GGUF stores Llama 3 scaling): [head_dim / 2], or undefined.
  torch::Tensor rope_freq_factors;
};

// The checks every WeightSource makes before reading `name` (as its file calls it) from
// `where`: that it exists (`found`) and has the shape the config needs.
absl::Status CheckTensor(absl::string_view where, absl::string_view name, bool found,
                         const std::vector<int64_t>& actual, const std::vector<int64_t>& expected);

// Reads every parameter `config` calls for from `source` into `dtype` on `device`.
// INVALID_ARGUMENT: a tensor is missing (named) or has the wrong shape.
absl::StatusOr<LlamaWeights> LoadLlamaWeights(const WeightSource& source, const ModelConfig& config,
                                              torch::Device device, torch::ScalarType dtype);

// The tensors of a GGUF file (which must outlive the source), dequantized; Q and K projections of
// llama-type files are permuted back from llama.cpp's interleaved rotary layout to the half-split
// one.
std::unique_ptr<WeightSource> GgufWeightSource(const GgufFile& file, const ModelConfig& config);

// The tensors of a Hugging Face safetensors checkpoint (which must outlive the source).
std::unique_ptr<WeightSource> HfWeightSource(const HfCheckpoint& checkpoint);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_LLAMA_WEIGHTS_H_
