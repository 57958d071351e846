// What Engine and Engine::Sequence hold, shared by the engine's translation units.
// Internal to model/ (torch types).
#ifndef APESERVE_MODEL_ENGINE_IMPL_H_
#define APESERVE_MODEL_ENGINE_IMPL_H_

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/attention.h"
#include "model/chat_template.h"
#include "model/device_kv.h"
#include "model/engine.h"
#include "model/kv_cache.h"
#include "model/kv_segment.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"
#include "model/torch_error.h"

namespace apeserve::model {

struct Engine::Impl {
  std::string fingerprint;
  std::unique_ptr<Tokenizer> tokenizer;
  absl::StatusOr<ChatTemplate> chat_template = absl::FailedPreconditionError("no chat template");
  std::unique_ptr<LlamaModel> model;
  AttentionKernel attention_kernel = AttentionKernel::kAuto;
  int64_t attention_block = 1024;
  int decode_threads = 1;
  int prefill_threads = 1;
};

// Runs libtorch's CPU kernels on `threads` threads from here on (it is a process-wide
// setting; the engine's callers take turns). No-op when already so.
void UseThreads(int threads);

struct Engine::Sequence::State {
  explicit State(KvCache empty) : cache(std::move(empty)) {}

  // The KV of the tokens the sequence computed itself. In PARALLEL and APE mode these
  // are the query's and the answer's: the prefix and the contexts are `held`, read
  // where they lie; in SEQUENTIAL mode all of them, the prefix first.
  KvCache cache;
  std::vector<HeldSegment> held;
  // What keeps the memory behind `held` alive while the sequence lives (a registry tier
  // may drop its own reference meanwhile).
  std::vector<std::shared_ptr<const void>> holders;
  int64_t held_length = 0;  // tokens in `held`
  // The cache's tokens sit at positions from `local_position` on.
  int64_t local_position = 0;
  // Tokens Truncate() keeps whatever it is asked (held ones included).
  int64_t fixed_length = 0;
  // Set in APE mode: how the query's attention reads the segments.
  std::optional<ApeLayout> ape;

  int64_t length() const { return held_length + cache.length(); }
  int64_t NextPosition() const { return local_position + cache.length(); }
};

// The engine's DeviceKv: per layer, K and V as [kv_heads, length, head_dim] tensors
// on the model's device in its dtype.
class TorchDeviceKv final : public DeviceKv {
 public:
  TorchDeviceKv(std::vector<torch::Tensor> keys, std::vector<torch::Tensor> values)
      : keys_(std::move(keys)), values_(std::move(values)) {}
  size_t bytes() const override;
  const std::vector<torch::Tensor>& keys() const { return keys_; }
  const std::vector<torch::Tensor>& values() const { return values_; }

 private:
  std::vector<torch::Tensor> keys_;
  std::vector<torch::Tensor> values_;
};

// The compute and storage dtypes the engine knows (KvDtype names them as the store
// does). TorchDtype: INVALID_ARGUMENT for a code outside KvDtype.
absl::StatusOr<torch::ScalarType> TorchDtype(KvDtype dtype);
KvDtype ToKvDtype(torch::ScalarType dtype);

// INVALID_ARGUMENT naming `what` and the first id outside [0, vocab_size).
absl::Status CheckTokenIds(absl::Span<const int32_t> tokens, int64_t vocab_size,
                           absl::string_view what);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_ENGINE_IMPL_H_
