#include "model/engine.h"

#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "model/engine_impl.h"
#include "model/fingerprint.h"
#include "model/gguf_file.h"
#include "model/gguf_header.h"
#include "model/hf_checkpoint.h"
#include "model/runtime.h"

namespace apeserve::model {

Engine::Sequence::Sequence(std::unique_ptr<State> state) : state_(std::move(state)) {}
Engine::Sequence::~Sequence() = default;
int64_t Engine::Sequence::length() const { return state_->length(); }
int64_t Engine::Sequence::next_position() const { return state_->NextPosition(); }
void Engine::Sequence::Reserve(int64_t tokens) {
  try {
    state_->cache.Reserve(std::max<int64_t>(tokens - state_->held_length, 0));
  } catch (const c10::Error&) {
    // Not fatal: the cache grows as tokens come (and a failing pass reports it).
  }
}
void Engine::Sequence::Truncate(int64_t length) {
  state_->cache.Truncate(std::max(length, state_->fixed_length) - state_->held_length);
}

absl::StatusOr<PreloadCheck> CheckBeforeLoad(const std::string& model_path,
                                             const std::string& device) {
  PreloadCheck check;
  APE_ASSIGN_OR_RETURN(check.header, ReadGgufHeader(model_path));
  APE_ASSIGN_OR_RETURN(const Device resolved, ResolveDevice(device));
  APE_RETURN_IF_ERROR(SelfTest(resolved));
  check.device = resolved.ToString();
  check.runtime = GetRuntimeInfo();
  return check;
}

absl::Status CheckTokenIds(absl::Span<const int32_t> tokens, int64_t vocab_size,
                           absl::string_view what) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, " token #", i, " is id ", tokens[i],
                                                     ", outside the vocabulary of ", vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<torch::ScalarType> TorchDtype(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFloat32:
      return torch::kFloat32;
    case KvDtype::kBFloat16:
      return torch::kBFloat16;
    case KvDtype::kFloat16:
      return torch::kFloat16;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("KV dtype code ", static_cast<int>(dtype), " is unknown"));
}

KvDtype ToKvDtype(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kBFloat16:
      return KvDtype::kBFloat16;
    case torch::kFloat16:
      return KvDtype::kFloat16;
    default:
      return KvDtype::kFloat32;
  }
}

namespace {

absl::StatusOr<torch::ScalarType> ResolveDtype(const std::string& name, const Device& device) {
  if (name == "auto") return device.type == DeviceType::kCuda ? torch::kBFloat16 : torch::kFloat32;
  const absl::StatusOr<KvDtype> dtype = ParseKvDtype(name);
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype '", name, "' is not one of auto, float32, bfloat16, float16"));
  }
  return TorchDtype(*dtype);
}

std::string DtypeName(torch::ScalarType dtype) {
  return std::string(KvDtypeName(ToKvDtype(dtype)));
}

}  // namespace

namespace {

// What a model folder or file provides besides its weights.
struct ModelParts {
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string chat_jinja;  // "" when the model has none
  std::string fingerprint;
  std::unique_ptr<WeightSource> weights;
  // Keep the mapped files alive while the weights are read.
  std::unique_ptr<GgufFile> gguf;
  std::unique_ptr<HfCheckpoint> hf;
};

absl::StatusOr<ModelParts> OpenGguf(const std::string& path) {
  ModelParts parts;
  APE_ASSIGN_OR_RETURN(parts.gguf, GgufFile::Open(path));
  APE_ASSIGN_OR_RETURN(parts.config, ConfigFromGguf(*parts.gguf));
  APE_ASSIGN_OR_RETURN(parts.tokenizer, Tokenizer::FromGguf(*parts.gguf));
  if (parts.gguf->Find("tokenizer.chat_template") != nullptr) {
    APE_ASSIGN_OR_RETURN(parts.chat_jinja, parts.gguf->GetString("tokenizer.chat_template"));
  }
  parts.fingerprint = FingerprintGguf(*parts.gguf);
  parts.weights = GgufWeightSource(*parts.gguf, parts.config);
  return parts;
}

absl::StatusOr<ModelParts> OpenHf(const std::string& dir) {
  ModelParts parts;
  APE_ASSIGN_OR_RETURN(parts.hf, HfCheckpoint::Open(dir));
  APE_ASSIGN_OR_RETURN(const std::string config_json, parts.hf->ReadText("config.json"));
  APE_ASSIGN_OR_RETURN(parts.config, ConfigFromHfJson(config_json));
  APE_ASSIGN_OR_RETURN(const std::string tokenizer_json, parts.hf->ReadText("tokenizer.json"));
  const absl::StatusOr<std::string> tokenizer_config = parts.hf->ReadText("tokenizer_config.json");
  const absl::StatusOr<std::string> generation_config =
      parts.hf->ReadText("generation_config.json");
  APE_ASSIGN_OR_RETURN(parts.tokenizer,
                       Tokenizer::FromHfJson(tokenizer_json, tokenizer_config.value_or(""),
                                             generation_config.value_or("")));
  // The template lives in chat_template.jinja (newer) or tokenizer_config.json.
  if (auto jinja = parts.hf->ReadText("chat_template.jinja"); jinja.ok()) {
    parts.chat_jinja = *std::move(jinja);
  } else if (tokenizer_config.ok()) {
    const nlohmann::json config = nlohmann::json::parse(*tokenizer_config, nullptr, false);
    if (config.is_object() && config.contains("chat_template") &&
        config["chat_template"].is_string()) {
      parts.chat_jinja = config["chat_template"].get<std::string>();
    }
  }
  parts.fingerprint = FingerprintHf(*parts.hf);
  parts.weights = HfWeightSource(*parts.hf);
  return parts;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Load(const EngineOptions& options) {
  AttentionKernel kernel = AttentionKernel::kAuto;
  if (options.attention_kernel == "blocked") {
    kernel = AttentionKernel::kBlocked;
  } else if (options.attention_kernel != "auto") {
    return absl::InvalidArgumentError(absl::StrCat("attention kernel '", options.attention_kernel,
                                                   "' is not one of auto, blocked"));
  }
  if (options.attention_block < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention block ", options.attention_block, " is below 1"));
  }
  if (options.decode_threads < 0 || options.prefill_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("threads ", options.decode_threads, " / ",
                                                   options.prefill_threads,
                                                   ": 0 (automatic) or more"));
  }
  APE_ASSIGN_OR_RETURN(const Device device, ResolveDevice(options.device));
  APE_ASSIGN_OR_RETURN(const torch::ScalarType dtype, ResolveDtype(options.dtype, device));
  std::error_code error;
  const bool folder = std::filesystem::is_directory(options.model_path, error);
  APE_ASSIGN_OR_RETURN(ModelParts parts,
                       folder ? OpenHf(options.model_path) : OpenGguf(options.model_path));
  const torch::Device torch_device =
      device.type == DeviceType::kCuda
          ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device.index))
          : torch::Device(torch::kCPU);
  try {
    APE_ASSIGN_OR_RETURN(LlamaWeights weights,
                         LoadLlamaWeights(*parts.weights, parts.config, torch_device, dtype));
    auto impl = std::make_unique<Impl>();
    impl->attention_kernel = kernel;
    impl->attention_block = options.attention_block;
    const int cores = at::get_num_threads();
    impl->prefill_threads = options.prefill_threads > 0 ? options.prefill_threads : cores;
    impl->decode_threads =
        options.decode_threads > 0 ? options.decode_threads : std::max(1, cores - 1);
    const Tokenizer& tokenizer = *parts.tokenizer;
    if (!parts.chat_jinja.empty()) {
      impl->chat_template = ChatTemplate::FromJinja(
          parts.chat_jinja, std::string(tokenizer.TokenBytes(tokenizer.bos_id())),
          std::string(tokenizer.TokenBytes(tokenizer.eos_id())));
      if (!impl->chat_template.ok()) {
        impl->chat_template = absl::FailedPreconditionError(impl->chat_template.status().message());
      }
    }
    impl->tokenizer = std::move(parts.tokenizer);
    impl->fingerprint = std::move(parts.fingerprint);
    impl->model = std::make_unique<LlamaModel>(std::move(parts.config), std::move(weights),
                                               torch_device, dtype);
    const ModelConfig& loaded = impl->model->config();
    LogInfo(absl::StrCat("model '", options.model_path, "' loaded: ", loaded.architecture, ", ",
                         loaded.num_layers, " layers, hidden ", loaded.hidden_size, ", vocab ",
                         loaded.vocab_size, ", on ", device.ToString(), " in ", DtypeName(dtype),
                         ", fingerprint ", impl->fingerprint,
                         "; CPU threads: ", impl->decode_threads, " decoding, ",
                         impl->prefill_threads, " for prompts"));
    return std::unique_ptr<Engine>(new Engine(std::move(impl)));
  } catch (const c10::Error& e) {
    return FromTorchError(e, absl::StrCat("loading '", options.model_path, "'"));
  }
}

absl::StatusOr<std::string> Engine::ModelFingerprint(const std::string& model_path) {
  std::error_code error;
  if (std::filesystem::is_directory(model_path, error)) {
    APE_ASSIGN_OR_RETURN(const std::unique_ptr<HfCheckpoint> hf, HfCheckpoint::Open(model_path));
    return FingerprintHf(*hf);
  }
  APE_ASSIGN_OR_RETURN(const std::unique_ptr<GgufFile> gguf, GgufFile::Open(model_path));
  return FingerprintGguf(*gguf);
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

const ModelConfig& Engine::config() const { return impl_->model->config(); }

const Tokenizer& Engine::tokenizer() const { return *impl_->tokenizer; }

const std::string& Engine::fingerprint() const { return impl_->fingerprint; }

absl::StatusOr<const ChatTemplate*> Engine::chat_template() const {
  if (!impl_->chat_template.ok()) return impl_->chat_template.status();
  return &*impl_->chat_template;
}

absl::StatusOr<PromptPieces> Engine::prompt_pieces() const {
  APE_ASSIGN_OR_RETURN(const ChatTemplate* chat, chat_template());
  return PromptPieces(tokenizer(), *chat);
}

std::string Engine::device() const { return impl_->model->device().str(); }

std::string Engine::dtype() const { return DtypeName(impl_->model->dtype()); }

void Engine::ReleaseIdleBuffers() const { impl_->model->ReleaseIdleKvBuffers(); }

void UseThreads(int threads) {
  if (at::get_num_threads() != threads) at::set_num_threads(threads);
}

void KeepTorchOnThisThread() {
  // With OpenMP (the wheel's backend) the count is the calling thread's own; the engine
  // sets its own before every step (UseThreads).
  at::set_num_threads(1);
}

size_t Engine::kv_bytes_per_token() const {
  const ModelConfig& config = impl_->model->config();
  return 2 * static_cast<size_t>(config.num_layers * config.num_kv_heads * config.head_dim) *
         KvDtypeSize(ToKvDtype(impl_->model->dtype()));
}

std::unique_ptr<Engine::Sequence> Engine::NewSequence() const {
  return std::unique_ptr<Sequence>(
      new Sequence(std::make_unique<Sequence::State>(impl_->model->NewCache())));
}

absl::StatusOr<std::vector<float>> Engine::Feed(Sequence& sequence,
                                                absl::Span<const int32_t> tokens,
                                                bool all_logits) const {
  const StepInput input{
      .sequence = &sequence, .tokens = tokens, .logits = all_logits ? Logits::kAll : Logits::kLast};
  APE_ASSIGN_OR_RETURN(std::vector<std::vector<float>> logits, Step({input}));
  return std::move(logits.front());
}

absl::StatusOr<std::vector<std::vector<float>>> Engine::Step(
    absl::Span<const StepInput> inputs) const {
  const ModelConfig& config = impl_->model->config();
  if (inputs.empty()) return absl::InvalidArgumentError("a step needs at least one sequence");
  std::vector<LlamaModel::SequenceInput> model_inputs;
  model_inputs.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const StepInput& input = inputs[i];
    // Feed's errors read as before; a batch's name the input.
    const std::string what = inputs.size() == 1 ? "" : absl::StrCat("step input #", i, ": ");
    if (input.sequence == nullptr) return absl::InvalidArgumentError(what + "no sequence");
    if (input.tokens.empty()) return absl::InvalidArgumentError(what + "no tokens to feed");
    APE_RETURN_IF_ERROR(CheckTokenIds(input.tokens, config.vocab_size, what + "fed"));
    Sequence::State& state = *input.sequence->state_;
    const int64_t position = state.NextPosition();
    const auto count = static_cast<int64_t>(input.tokens.size());
    if (position + count > config.max_position) {
      return absl::OutOfRangeError(absl::StrCat(what, "the sequence would reach position ",
                                                position + count, "; the model's context is ",
                                                config.max_position));
    }
    for (size_t j = 0; j < i; ++j) {
      if (inputs[j].sequence == input.sequence) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, "the sequence of input #", j, " again"));
      }
    }
    model_inputs.push_back({.tokens = input.tokens,
                            .first_position = position,
                            .cache = &state.cache,
                            .ape = state.ape ? &*state.ape : nullptr,
                            .logits = input.logits == Logits::kAll    ? LlamaModel::Logits::kAll
                                      : input.logits == Logits::kLast ? LlamaModel::Logits::kLast
                                                                      : LlamaModel::Logits::kNone,
                            .held = state.held});
  }
  std::vector<int64_t> cached;  // each cache's length before the pass
  cached.reserve(inputs.size());
  for (const StepInput& input : inputs) cached.push_back(input.sequence->state_->cache.length());
  const bool decoding_only = std::all_of(inputs.begin(), inputs.end(),
                                         [](const StepInput& in) { return in.tokens.size() == 1; });
  UseThreads(decoding_only ? impl_->decode_threads : impl_->prefill_threads);
  try {
    const torch::Tensor logits = impl_->model->Forward(model_inputs);  // host, fp32
    const float* data = logits.data_ptr<float>();
    const auto vocab = static_cast<size_t>(config.vocab_size);
    std::vector<std::vector<float>> results(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      size_t rows = 0;
      if (inputs[i].logits == Logits::kAll) rows = inputs[i].tokens.size();
      if (inputs[i].logits == Logits::kLast) rows = 1;
      results[i].assign(data, data + rows * vocab);
      data += rows * vocab;
    }
    return results;
  } catch (const c10::Error& e) {
    // A failed pass leaves every sequence as it was.
    for (size_t i = 0; i < inputs.size(); ++i)
      inputs[i].sequence->state_->cache.Truncate(cached[i]);
    return FromTorchError(e, "forward pass");
  }
}

}  // namespace apeserve::model
