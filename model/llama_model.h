// The Llama-family transformer (Llama 2/3, SmolLM2, Mistral, Qwen2): a forward pass
// over new tokens at explicit positions, attending to a KV cache, for one sequence or
// several at once.
// Internal to model/ (torch types). Thread-safety: Forward() is const and may run
// concurrently on different caches.
#ifndef APESERVE_MODEL_LLAMA_MODEL_H_
#define APESERVE_MODEL_LLAMA_MODEL_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/types/span.h"
#include "model/attention.h"
#include "model/kv_cache.h"
#include "model/llama_weights.h"
#include "model/model_config.h"
#include "model/packed_linear.h"

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

  // An empty cache for one sequence, its storage from the model's buffer pool.
  KvCache NewCache() const;
  // Frees the pooled cache storage idle past the pool's time (none on a GPU).
  void ReleaseIdleKvBuffers() const {
    if (kv_pool_ != nullptr) kv_pool_->Trim();
  }

  // One sequence's part of a forward pass: its new tokens at consecutive positions
  // from `first_position`, the cache they attend to and extend, and how they attend.
  struct SequenceInput {
    absl::Span<const int32_t> tokens;
    int64_t first_position = 0;
    KvCache* cache = nullptr;
    // Given, the tokens attend by APE's merge of the cache's segments; else with one
    // causal softmax over the cache and the tokens before them.
    const ApeLayout* ape = nullptr;
    Logits logits = Logits::kLast;
    // KV the tokens read in place before the cache (the prefix and contexts of a
    // PARALLEL or APE sequence): then the cache holds the sequence's own tokens only.
    absl::Span<const HeldSegment> held = {};
  };

  // Runs the tokens of every input in one pass: embeddings, projections and the MLP
  // see all of them as one batch (the weights are read once per pass, whatever the
  // number of sequences), attention runs per sequence over its held segments and its own
  // cache, in its own mode. Appends each input's keys and values to its cache. Returns fp32 logits
  // on the host, one row per requested token, in input order: T rows for kAll, one (the last token)
  // for kLast, none for kNone. Caches must be distinct.
  torch::Tensor Forward(absl::Span<const SequenceInput> inputs) const;

 private:
  torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight) const;
  // Rotates [T, heads, head_dim] by the angles of `positions` (half-split layout).
  torch::Tensor Rotate(const torch::Tensor& x, const torch::Tensor& cos,
                       const torch::Tensor& sin) const;

  // A layer's projections, packed for the device (see packed_linear.h).
  struct LayerLinears {
    PackedLinear q, k, v, o, gate, up, down;
  };

  ModelConfig config_;
  LlamaWeights weights_;  // the norms and the embedding; the projections moved out
  std::vector<LayerLinears> linears_;
  PackedLinear output_;
  torch::Device device_;
  torch::ScalarType dtype_;
  // Host KV caches' storage, reused from request to request (kv_buffer_pool.h); none
  // on a GPU, where torch's caching allocator already keeps freed blocks.
  std::shared_ptr<KvBufferPool> kv_pool_;
  torch::Tensor inverse_frequencies_;  // [head_dim / 2], fp32
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_LLAMA_MODEL_H_
