// The engine's pre-encoded contexts: the shared prefix, contexts encoded against it,
// and sequences that start from them in each encoding mode (DESIGN.md §3).
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/engine.h"
#include "model/engine_impl.h"
#include "model/fingerprint.h"

namespace apeserve::model {
namespace {

// Tokens per forward pass when SEQUENTIAL recomputes the contexts: bounds the attention's
// working memory for long context lists.
constexpr int64_t kPrefillChunk = 512;

// INVALID_ARGUMENT unless `kv` is well formed and shaped for `config`; without
// `with_layers`, only its shape is checked (its bytes live on the device).
absl::Status CheckKvFits(const KvSegment& kv, const ModelConfig& config, absl::string_view what,
                         bool with_layers = true) {
  if (absl::Status valid = with_layers ? kv.Validate() : kv.ValidateShape(); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", valid.message()));
  }
  if (kv.num_layers != config.num_layers || kv.kv_heads != config.num_kv_heads ||
      kv.head_dim != config.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " has ", kv.num_layers, " layers x ", kv.kv_heads, " KV heads x ", kv.head_dim,
        "; the model has ", config.num_layers, " x ", config.num_kv_heads, " x ", config.head_dim));
  }
  return absl::OkStatus();
}

// Appends `kv` to every layer of `cache`, converted to the cache's device and dtype.
void AppendSegment(const KvSegment& kv, KvCache& cache, const torch::TensorOptions& options) {
  const torch::ScalarType stored = *TorchDtype(kv.dtype);  // checked by CheckKvFits
  const std::vector<int64_t> shape{kv.kv_heads, kv.length, kv.head_dim};
  const size_t half = kv.LayerBytes() / 2;
  for (size_t layer = 0; layer < kv.layers.size(); ++layer) {
    // from_blob wants a mutable pointer; the tensors are only read.
    char* bytes = const_cast<char*>(kv.layers[layer].data());
    const torch::Tensor k = torch::from_blob(bytes, shape, stored).to(options);
    const torch::Tensor v = torch::from_blob(bytes + half, shape, stored).to(options);
    cache.Append(layer, k, v);
  }
}

// INVALID_ARGUMENT unless the context's KV, on the host or on the device, fits `config`.
absl::Status CheckContextKvFits(const EncodedContext& context, const ModelConfig& config,
                                absl::string_view what) {
  if (context.device == nullptr) return CheckKvFits(context.kv, config, what);
  APE_RETURN_IF_ERROR(CheckKvFits(context.kv, config, what, /*with_layers=*/false));
  const auto* device = dynamic_cast<const TorchDeviceKv*>(context.device.get());
  if (device == nullptr || device->keys().size() != static_cast<size_t>(config.num_layers)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " on the device was not made by ToDevice"));
  }
  return absl::OkStatus();
}

// Copies `length` cached tokens from `start` out of `cache` as a plain value.
KvSegment ExportSegment(const KvCache& cache, const ModelConfig& config, torch::ScalarType dtype,
                        int64_t start, int64_t length, int64_t start_position) {
  KvSegment kv;
  kv.dtype = ToKvDtype(dtype);
  kv.num_layers = static_cast<int32_t>(config.num_layers);
  kv.kv_heads = static_cast<int32_t>(config.num_kv_heads);
  kv.head_dim = static_cast<int32_t>(config.head_dim);
  kv.start_position = start_position;
  kv.length = length;
  const size_t half = kv.LayerBytes() / 2;
  kv.layers.resize(static_cast<size_t>(config.num_layers));
  for (size_t layer = 0; layer < kv.layers.size(); ++layer) {
    std::string& bytes = kv.layers[layer];
    bytes.resize(2 * half);
    if (length == 0) continue;
    const auto [k, v] = cache.Slice(layer, start, length);
    const torch::Tensor host_k = k.to(torch::kCPU).contiguous();
    const torch::Tensor host_v = v.to(torch::kCPU).contiguous();
    std::memcpy(bytes.data(), host_k.data_ptr(), half);
    std::memcpy(bytes.data() + half, host_v.data_ptr(), half);
  }
  return kv;
}

// Runs `tokens` through `model` after what `cache` holds, at positions from
// `first_position`, in chunks, keeping only their KV.
void Prefill(const LlamaModel& model, absl::Span<const int32_t> tokens, int64_t first_position,
             KvCache& cache, int threads) {
  UseThreads(threads);
  for (size_t done = 0; done < tokens.size(); done += kPrefillChunk) {
    const size_t count = std::min<size_t>(kPrefillChunk, tokens.size() - done);
    const LlamaModel::SequenceInput input{
        .tokens = tokens.subspan(done, count),
        .first_position = first_position + static_cast<int64_t>(done),
        .cache = &cache,
        .ape = nullptr,
        .logits = LlamaModel::Logits::kNone};
    model.Forward({input});
  }
}

absl::Status CheckLength(int64_t end, const ModelConfig& config, absl::string_view what) {
  if (end > config.max_position) {
    return absl::OutOfRangeError(absl::StrCat(what, " would reach position ", end,
                                              "; the model's context is ", config.max_position));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<EncodedPrefix> Engine::EncodePrefix(absl::Span<const int32_t> tokens) const {
  const LlamaModel& model = *impl_->model;
  const ModelConfig& config = model.config();
  APE_RETURN_IF_ERROR(CheckTokenIds(tokens, config.vocab_size, "prefix"));
  const auto length = static_cast<int64_t>(tokens.size());
  APE_RETURN_IF_ERROR(CheckLength(length, config, "the prefix"));
  try {
    KvCache cache = model.NewCache();
    cache.Reserve(length);
    Prefill(model, tokens, 0, cache, impl_->prefill_threads);
    EncodedPrefix prefix;
    prefix.tokens.assign(tokens.begin(), tokens.end());
    prefix.hash = FingerprintTokens(impl_->fingerprint, tokens);
    prefix.kv = ExportSegment(cache, config, model.dtype(), 0, length, 0);
    return prefix;
  } catch (const c10::Error& e) {
    return FromTorchError(e, "encoding the prefix");
  }
}

namespace {

// INVALID_ARGUMENT unless `prefix` was encoded by this model from its own tokens.
absl::Status CheckPrefix(const EncodedPrefix& prefix, const ModelConfig& config,
                         const std::string& fingerprint) {
  APE_RETURN_IF_ERROR(CheckTokenIds(prefix.tokens, config.vocab_size, "prefix"));
  if (prefix.hash != FingerprintTokens(fingerprint, prefix.tokens)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefix hash '", prefix.hash, "' does not name its tokens under model ", fingerprint));
  }
  APE_RETURN_IF_ERROR(CheckKvFits(prefix.kv, config, "prefix KV"));
  if (prefix.kv.start_position != 0 ||
      prefix.kv.length != static_cast<int64_t>(prefix.tokens.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefix KV covers positions ", prefix.kv.start_position, " .. +",
                     prefix.kv.length, ", not its ", prefix.tokens.size(), " tokens from 0"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<EncodedContext> Engine::EncodeContext(const EncodedPrefix& prefix,
                                                     absl::Span<const int32_t> tokens) const {
  const LlamaModel& model = *impl_->model;
  const ModelConfig& config = model.config();
  APE_RETURN_IF_ERROR(CheckPrefix(prefix, config, impl_->fingerprint));
  if (tokens.empty()) return absl::InvalidArgumentError("a context needs at least one token");
  APE_RETURN_IF_ERROR(CheckTokenIds(tokens, config.vocab_size, "context"));
  const int64_t start = prefix.kv.length;
  const auto length = static_cast<int64_t>(tokens.size());
  APE_RETURN_IF_ERROR(CheckLength(start + length, config, "the context"));
  try {
    KvCache cache = model.NewCache();
    cache.Reserve(start + length);
    const auto options = torch::TensorOptions().device(model.device()).dtype(model.dtype());
    AppendSegment(prefix.kv, cache, options);
    Prefill(model, tokens, start, cache, impl_->prefill_threads);
    EncodedContext context;
    context.tokens.assign(tokens.begin(), tokens.end());
    context.prefix_hash = prefix.hash;
    context.kv = ExportSegment(cache, config, model.dtype(), start, length, start);
    return context;
  } catch (const c10::Error& e) {
    return FromTorchError(e, "encoding a context");
  }
}

absl::StatusOr<EncodedContext> Engine::ExportContext(const Sequence& sequence,
                                                     const EncodedPrefix& prefix,
                                                     absl::Span<const int32_t> tokens) const {
  const LlamaModel& model = *impl_->model;
  const Sequence::State& state = *sequence.state_;
  const int64_t start = prefix.kv.length;
  const auto length = static_cast<int64_t>(tokens.size());
  if (tokens.empty()) return absl::InvalidArgumentError("a context needs at least one token");
  if (!state.held.empty() || state.ape.has_value() || state.local_position != 0 ||
      state.cache.length() != start + length) {
    return absl::InvalidArgumentError(
        absl::StrCat("the sequence holds ", state.length(), " tokens in ",
                     state.held.empty() ? "one causal run" : "held segments", ", not the ", start,
                     " of the prefix and the context's ", length));
  }
  try {
    EncodedContext context;
    context.tokens.assign(tokens.begin(), tokens.end());
    context.prefix_hash = prefix.hash;
    context.kv = ExportSegment(state.cache, model.config(), model.dtype(), start, length, start);
    return context;
  } catch (const c10::Error& e) {
    return FromTorchError(e, "exporting a context");
  }
}

size_t TorchDeviceKv::bytes() const {
  size_t total = 0;
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    total += keys_[layer].nbytes() + values_[layer].nbytes();
  }
  return total;
}

absl::StatusOr<EncodedContext> Engine::ToDevice(const EncodedContext& context) const {
  const LlamaModel& model = *impl_->model;
  APE_RETURN_IF_ERROR(CheckContextKvFits(context, model.config(), "context KV"));
  if (context.device != nullptr) return context;
  try {
    const KvSegment& kv = context.kv;
    const torch::ScalarType stored = *TorchDtype(kv.dtype);  // checked above
    const std::vector<int64_t> shape{kv.kv_heads, kv.length, kv.head_dim};
    const auto options = torch::TensorOptions().device(model.device()).dtype(model.dtype());
    const size_t half = kv.LayerBytes() / 2;
    std::vector<torch::Tensor> keys, values;
    keys.reserve(kv.layers.size());
    values.reserve(kv.layers.size());
    for (const std::string& layer : kv.layers) {
      // from_blob wants a mutable pointer; the bytes are only read, and copied (copy=
      // true) even where the dtype and device already match, since `kv` may go away.
      char* bytes = const_cast<char*>(layer.data());
      keys.push_back(torch::from_blob(bytes, shape, stored).to(options, false, true));
      values.push_back(torch::from_blob(bytes + half, shape, stored).to(options, false, true));
    }
    EncodedContext on_device;
    on_device.tokens = context.tokens;
    on_device.prefix_hash = context.prefix_hash;
    on_device.kv = KvSegment{.dtype = ToKvDtype(model.dtype()),
                             .num_layers = kv.num_layers,
                             .kv_heads = kv.kv_heads,
                             .head_dim = kv.head_dim,
                             .start_position = kv.start_position,
                             .length = kv.length,
                             .layers = {}};
    on_device.device = std::make_shared<const TorchDeviceKv>(std::move(keys), std::move(values));
    return on_device;
  } catch (const c10::Error& e) {
    return FromTorchError(e, "copying a context to the device");
  }
}

absl::StatusOr<std::unique_ptr<Engine::Sequence>> Engine::StartSequence(
    const EncodedPrefix& prefix, absl::Span<const EncodedContext* const> contexts,
    const ApeOptions& options) const {
  APE_ASSIGN_OR_RETURN(SequenceStart start, BeginSequence(prefix, contexts, options));
  if (start.tokens_to_feed.empty()) return std::move(start.sequence);
  Sequence::State& state = *start.sequence->state_;
  try {
    Prefill(*impl_->model, start.tokens_to_feed, state.NextPosition(), state.cache,
            impl_->prefill_threads);
  } catch (const c10::Error& e) {
    return FromTorchError(e, "starting a sequence");
  }
  state.fixed_length = state.cache.length();
  return std::move(start.sequence);
}

absl::StatusOr<Engine::SequenceStart> Engine::BeginSequence(
    const EncodedPrefix& prefix, absl::Span<const EncodedContext* const> contexts,
    const ApeOptions& options) const {
  // The sequence owns copies: the caller's values may go before it does.
  std::vector<std::shared_ptr<const EncodedContext>> copies;
  copies.reserve(contexts.size());
  for (const EncodedContext* context : contexts) {
    if (context == nullptr) return absl::InvalidArgumentError("a context is null");
    copies.push_back(std::make_shared<const EncodedContext>(*context));
  }
  return BeginSequence(std::make_shared<const EncodedPrefix>(prefix), copies, options);
}

bool Engine::ReadsInPlace(const EncodedContext& context) const {
  // ToDevice made device KV for this engine.
  return context.device != nullptr || ReadsInPlace(context.kv);
}

bool Engine::ReadsInPlace(const KvSegment& host_kv) const {
  const LlamaModel& model = *impl_->model;
  return model.device().is_cpu() && host_kv.dtype == ToKvDtype(model.dtype());
}

namespace {

// `kv` as a held segment in `options`' device and dtype: tensors over its bytes where
// they already are so (`in_place`, the caller keeps the bytes alive), else converted
// copies.
HeldSegment HoldHostKv(const KvSegment& kv, const torch::TensorOptions& options, bool contexts,
                       bool& in_place) {
  const torch::ScalarType stored = *TorchDtype(kv.dtype);  // checked by CheckKvFits
  in_place = options.device().is_cpu() && stored == options.dtype().toScalarType();
  const std::vector<int64_t> shape{kv.kv_heads, kv.length, kv.head_dim};
  const size_t half = kv.LayerBytes() / 2;
  HeldSegment held{.length = kv.length, .contexts = contexts};
  held.keys.reserve(kv.layers.size());
  held.values.reserve(kv.layers.size());
  for (const std::string& layer : kv.layers) {
    // from_blob wants a mutable pointer; the tensors are only read.
    char* bytes = const_cast<char*>(layer.data());
    held.keys.push_back(torch::from_blob(bytes, shape, stored).to(options));
    held.values.push_back(torch::from_blob(bytes + half, shape, stored).to(options));
  }
  return held;
}

// KV made by ToDevice as a held segment; the tensors keep their memory alive.
HeldSegment HoldDeviceKv(const TorchDeviceKv& kv, int64_t length,
                         const torch::TensorOptions& options) {
  HeldSegment held{.length = length, .contexts = true};
  for (size_t layer = 0; layer < kv.keys().size(); ++layer) {
    held.keys.push_back(kv.keys()[layer].to(options));
    held.values.push_back(kv.values()[layer].to(options));
  }
  return held;
}

}  // namespace

absl::StatusOr<Engine::SequenceStart> Engine::BeginSequence(
    const std::shared_ptr<const EncodedPrefix>& shared_prefix,
    absl::Span<const std::shared_ptr<const EncodedContext>> contexts,
    const ApeOptions& options) const {
  const LlamaModel& model = *impl_->model;
  const ModelConfig& config = model.config();
  APE_RETURN_IF_ERROR(options.Validate());
  if (shared_prefix == nullptr) return absl::InvalidArgumentError("no prefix");
  const EncodedPrefix& prefix = *shared_prefix;
  APE_RETURN_IF_ERROR(CheckPrefix(prefix, config, impl_->fingerprint));
  const int64_t prefix_length = prefix.kv.length;
  int64_t total = 0, longest = 0;
  for (size_t i = 0; i < contexts.size(); ++i) {
    const std::string what = absl::StrCat("context #", i);
    if (contexts[i] == nullptr) return absl::InvalidArgumentError(what + " is null");
    const EncodedContext& context = *contexts[i];
    if (context.tokens.empty()) return absl::InvalidArgumentError(what + " has no tokens");
    APE_RETURN_IF_ERROR(CheckTokenIds(context.tokens, config.vocab_size, what));
    const auto length = static_cast<int64_t>(context.tokens.size());
    if (options.mode != EncodingMode::kSequential) {
      if (context.prefix_hash != prefix.hash) {
        return absl::InvalidArgumentError(absl::StrCat(what, " was encoded after prefix ",
                                                       context.prefix_hash, ", not ", prefix.hash));
      }
      APE_RETURN_IF_ERROR(CheckContextKvFits(context, config, what + " KV"));
      if (context.kv.start_position != prefix_length || context.kv.length != length) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, " KV covers positions ", context.kv.start_position, " .. +",
                         context.kv.length, ", not its ", length, " tokens from ", prefix_length));
      }
    }
    total += length;
    longest = std::max(longest, length);
  }
  const bool sequential = options.mode == EncodingMode::kSequential;
  APE_RETURN_IF_ERROR(
      CheckLength(prefix_length + (sequential ? total : longest), config, "the contexts"));

  // Room in the cache for the query and some generated tokens.
  constexpr int64_t kOwnTokens = 256;
  try {
    auto state = std::make_unique<Sequence::State>(model.NewCache());
    Sequence::State& sequence = *state;
    const auto tensor_options = torch::TensorOptions().device(model.device()).dtype(model.dtype());
    SequenceStart start;
    if (sequential) {
      // The contexts' tokens are computed by the caller (StartSequence, or a scheduler
      // in chunks), as the causal continuation of the prefix, which the cache holds.
      sequence.cache.Reserve(prefix_length + total + kOwnTokens);
      if (prefix_length > 0) AppendSegment(prefix.kv, sequence.cache, tensor_options);
      start.tokens_to_feed.reserve(static_cast<size_t>(total));
      for (const auto& context : contexts) {
        start.tokens_to_feed.insert(start.tokens_to_feed.end(), context->tokens.begin(),
                                    context->tokens.end());
      }
      sequence.local_position = 0;
    } else {
      sequence.cache.Reserve(kOwnTokens);
      bool in_place = false;
      if (prefix_length > 0) {
        sequence.held.push_back(HoldHostKv(prefix.kv, tensor_options, false, in_place));
        if (in_place) sequence.holders.push_back(shared_prefix);
      }
      for (const auto& context : contexts) {
        if (context->device != nullptr) {
          // Checked by CheckContextKvFits above.
          sequence.held.push_back(HoldDeviceKv(static_cast<const TorchDeviceKv&>(*context->device),
                                               context->kv.length, tensor_options));
        } else {
          sequence.held.push_back(HoldHostKv(context->kv, tensor_options, true, in_place));
          if (in_place) sequence.holders.push_back(context);
        }
      }
      sequence.held_length = prefix_length + total;
      sequence.local_position = prefix_length + longest;
      if (options.mode == EncodingMode::kApe) {
        sequence.ape = ApeLayout{.prefix_length = prefix_length,
                                 .context_length = total,
                                 .temperature = options.temperature,
                                 .scale = options.scale,
                                 .form = options.form,
                                 .kernel = impl_->attention_kernel,
                                 .block = impl_->attention_block};
      }
    }
    sequence.fixed_length = sequence.length();
    start.sequence = std::unique_ptr<Sequence>(new Sequence(std::move(state)));
    return start;
  } catch (const c10::Error& e) {
    return FromTorchError(e, "starting a sequence");
  }
}

}  // namespace apeserve::model
