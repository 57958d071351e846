// The inference engine: a model loaded onto a device, and sequences that feed it
// tokens and read back logits. The border of model/: no torch type crosses it, and
// every libtorch error becomes an absl::Status here.
//
// Thread-safety: an Engine is immutable after Load() and may serve many threads; a
// Sequence belongs to one thread at a time.
#ifndef APESERVE_MODEL_ENGINE_H_
#define APESERVE_MODEL_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/chat_template.h"
#include "model/model_config.h"
#include "model/tokenizer.h"

namespace apeserve::model {

struct EngineOptions {
  // A GGUF model file, or a Hugging Face model folder (config.json, safetensors,
  // tokenizer.json). Required.
  std::string model_path;
  // "auto", "cpu", "cuda" or "cuda:N". Default: "auto" (the first GPU, else the CPU).
  std::string device = "auto";
  // Compute dtype: "auto", "float32", "bfloat16" or "float16".
  // Default: "auto" (float32 on the CPU, bfloat16 on a GPU).
  std::string dtype = "auto";
};

class Engine {
 public:
  // A token sequence being decoded: its length and its KV cache.
  class Sequence;

  // Loads and dequantizes the model onto the device.
  // NOT_FOUND / PERMISSION_DENIED: the model file cannot be read. INVALID_ARGUMENT: a
  // malformed file, an unsupported architecture, or a bad device or dtype name.
  // FAILED_PRECONDITION: a CUDA device that does not exist. RESOURCE_EXHAUSTED: out of
  // memory.
  static absl::StatusOr<std::unique_ptr<Engine>> Load(const EngineOptions& options);

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine();

  const ModelConfig& config() const;
  const Tokenizer& tokenizer() const;
  // The model's chat format; FAILED_PRECONDITION when its metadata has no template
  // of a family we know (raw prompts still work).
  absl::StatusOr<const ChatTemplate*> chat_template() const;
  // The fingerprint of the model's weights (see fingerprint.h).
  const std::string& fingerprint() const;
  // "cpu" or "cuda:N", and "float32", "bfloat16" or "float16".
  std::string device() const;
  std::string dtype() const;

  std::unique_ptr<Sequence> NewSequence() const;

  // Feeds `tokens` at the next positions of `sequence`. Returns fp32 logits of the
  // last token ([vocab]), or of every fed token ([tokens.size() * vocab]) when
  // `all_logits`. INVALID_ARGUMENT: no tokens, or an id outside the vocabulary.
  // OUT_OF_RANGE: the sequence would pass the model's context length.
  absl::StatusOr<std::vector<float>> Feed(Sequence& sequence, absl::Span<const int32_t> tokens,
                                          bool all_logits = false) const;

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Engine::Sequence {
 public:
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;
  ~Sequence();

  // Tokens fed so far.
  int64_t length() const;

 private:
  friend class Engine;
  struct State;  // the KV cache
  explicit Sequence(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_ENGINE_H_
