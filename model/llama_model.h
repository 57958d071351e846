// The Llama-family transformer (Llama 2/3, SmolLM2, Mistral, Qwen2): a forward pass
// over new tokens at explicit positions, attending to a KV cache.
// Internal to model/ (torch types). Thread-safety: Forward() is const and may run
// concurrently on different caches.
#ifndef APESERVE_MODEL_LLAMA_MODEL_H_
#define APESERVE_MODEL_LLAMA_MODEL_H_

#include <torch/torch.h>

#include "model/attention.h"
#include "model/kv_cache.h"
#include "model/llama_weights.h"
#include "model/model_config.h"

namespace apeserve::model {

class LlamaModel {
 public:
  // Which logits a forward pass computes.
  enum class Logits { kNone, kLast, kAll };

  LlamaModel(ModelConfig config, LlamaWeights weights, torch::Device device,
             torch::ScalarType dtype);

  const ModelConfig& config() const { return config_; }
  torch::Device device() const { return device_; }
  torch::ScalarType dtype() const { return dtype_; }

  KvCache NewCache() const;

  // Runs `tokens` ([T], int64) at `positions` ([T], int64) after what `cache` holds,
  // appending their keys and values to it. Each token attends to the cache and to the
  // tokens before it: with one causal softmax, or, given `ape`, by APE's merge of the
  // cache's segments. Returns fp32 logits: [T, vocab] for kAll, [1, vocab] (the last
  // token) for kLast, an undefined tensor for kNone.
  torch::Tensor Forward(const torch::Tensor& tokens, const torch::Tensor& positions, KvCache& cache,
                        Logits logits, const ApeLayout* ape = nullptr) const;

 private:
  torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight) const;
  // Rotates [T, heads, head_dim] by the angles of `positions` (half-split layout).
  torch::Tensor Rotate(const torch::Tensor& x, const torch::Tensor& cos,
                       const torch::Tensor& sin) const;

  ModelConfig config_;
  LlamaWeights weights_;
  torch::Device device_;
  torch::ScalarType dtype_;
  torch::Tensor inverse_frequencies_;  // [head_dim / 2], fp32
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_LLAMA_MODEL_H_
