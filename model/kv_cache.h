// The keys and values one sequence has produced, per layer, in preallocated storage
// that grows geometrically so that decoding a token copies nothing already cached.
// Internal to model/ (torch types). Not thread-safe: one sequence, one thread.
#ifndef APESERVE_MODEL_KV_CACHE_H_
#define APESERVE_MODEL_KV_CACHE_H_

#include <torch/torch.h>

#include <memory>
#include <utility>
#include <vector>

#include "model/kv_buffer_pool.h"

namespace apeserve::model {

class KvCache {
 public:
  // `pool`, when given, supplies the storage and takes it back when it is outgrown or
  // the cache is destroyed (kv_buffer_pool.h says why); else each growth allocates.
  KvCache(int64_t num_layers, int64_t kv_heads, int64_t head_dim, torch::TensorOptions options,
          std::shared_ptr<KvBufferPool> pool = nullptr)
      : kv_heads_(kv_heads),
        head_dim_(head_dim),
        options_(options),
        pool_(std::move(pool)),
        keys_(static_cast<size_t>(num_layers)),
        values_(static_cast<size_t>(num_layers)) {}

  // One owner: the storage goes back to the pool once. A moved-from cache is empty.
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;
  KvCache(KvCache&& other) noexcept
      : kv_heads_(other.kv_heads_),
        head_dim_(other.head_dim_),
        options_(other.options_),
        pool_(std::move(other.pool_)),
        keys_(std::exchange(other.keys_, {})),
        values_(std::exchange(other.values_, {})),
        length_(std::exchange(other.length_, 0)) {}
  KvCache& operator=(KvCache&&) = delete;

  ~KvCache() {
    if (pool_ == nullptr) return;
    for (size_t layer = 0; layer < keys_.size(); ++layer) {
      pool_->Give(std::move(keys_[layer]));
      pool_->Give(std::move(values_[layer]));
    }
  }

  // Tokens cached so far (the same in every layer once a forward pass completes).
  int64_t length() const { return length_; }

  // Appends `k` and `v` ([kv_heads, T, head_dim]) to `layer`; returns views of the whole
  // cache of that layer, [kv_heads, length + T, head_dim]. The last layer's append
  // advances length().
  std::pair<torch::Tensor, torch::Tensor> Append(size_t layer, const torch::Tensor& k,
                                                 const torch::Tensor& v) {
    const int64_t past = length_, count = k.size(1);
    auto [keys, values] = Extend(layer, count);
    keys.narrow(1, past, count).copy_(k);
    values.narrow(1, past, count).copy_(v);
    return {keys.narrow(1, 0, past + count), values.narrow(1, 0, past + count)};
  }

  // Makes room for `count` tokens after length() in `layer` and returns the layer's
  // whole storage, [kv_heads, capacity, head_dim], for the caller to write them from
  // position length() (read before the call). The last layer's call advances length().
  std::pair<torch::Tensor, torch::Tensor> Extend(size_t layer, int64_t count) {
    const int64_t needed = length_ + count;
    torch::Tensor& keys = keys_[layer];
    if (!keys.defined() || keys.size(1) < needed) {
      Grow(layer, std::max<int64_t>(needed, keys.defined() ? 2 * keys.size(1) : 64));
    }
    if (layer + 1 == keys_.size()) length_ = needed;
    return {keys, values_[layer]};
  }

  // Makes room for `tokens` in every layer, so that appends up to that length copy
  // nothing already cached.
  void Reserve(int64_t tokens) {
    for (size_t layer = 0; layer < keys_.size(); ++layer) {
      if (!keys_[layer].defined() || keys_[layer].size(1) < tokens) Grow(layer, tokens);
    }
  }

  // Views of `length` cached tokens of `layer` from `start`: [kv_heads, length, head_dim].
  std::pair<torch::Tensor, torch::Tensor> Slice(size_t layer, int64_t start, int64_t length) const {
    return {keys_[layer].narrow(1, start, length), values_[layer].narrow(1, start, length)};
  }

  // Forgets everything after the first `length` tokens (e.g. a rejected draft).
  void Truncate(int64_t length) { length_ = std::min(length_, length); }

 private:
  void Grow(size_t layer, int64_t capacity) {
    torch::Tensor& keys = keys_[layer];
    torch::Tensor& values = values_[layer];
    torch::Tensor grown_k = NewStorage(capacity);
    torch::Tensor grown_v = NewStorage(capacity);
    if (length_ > 0) {
      grown_k.narrow(1, 0, length_).copy_(keys.narrow(1, 0, length_));
      grown_v.narrow(1, 0, length_).copy_(values.narrow(1, 0, length_));
    }
    if (pool_ != nullptr) {
      pool_->Give(std::exchange(keys, grown_k));
      pool_->Give(std::exchange(values, grown_v));
    } else {
      keys = grown_k;
      values = grown_v;
    }
  }

  // [kv_heads, at least `capacity`, head_dim]: a pooled buffer may hold a few tokens more.
  torch::Tensor NewStorage(int64_t capacity) const {
    if (pool_ == nullptr) return torch::empty({kv_heads_, capacity, head_dim_}, options_);
    const int64_t per_token = kv_heads_ * head_dim_;
    const torch::Tensor flat = pool_->Take(per_token * capacity);
    // A tensor of its own over the buffer's storage, not a view: a view would keep
    // `flat` alive as its base, and the pool keeps only storage nothing else holds.
    return torch::empty({0}, options_)
        .set_(flat.storage(), 0, {kv_heads_, flat.numel() / per_token, head_dim_});
  }

  int64_t kv_heads_;
  int64_t head_dim_;
  torch::TensorOptions options_;
  std::shared_ptr<KvBufferPool> pool_;
  std::vector<torch::Tensor> keys_;    // per layer [kv_heads, capacity, head_dim]
  std::vector<torch::Tensor> values_;  // per layer
  int64_t length_ = 0;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_KV_CACHE_H_
