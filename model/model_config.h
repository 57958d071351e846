// The hyper-parameters of a Llama-family transformer, read from GGUF metadata or a
// Hugging Face config.json. Architectures other than the ones we run are refused by
// name. Thread-safety: plain value.
#ifndef APESERVE_MODEL_MODEL_CONFIG_H_
#define APESERVE_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

class GgufFile;

// How rotary position frequencies are rescaled for long contexts.
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;          // Llama 3
  double high_freq_factor = 4.0;         // Llama 3
  int64_t original_max_position = 8192;  // Llama 3
};

struct ModelConfig {
  std::string architecture;  // "llama", "mistral", "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;  // the output projection is the embedding matrix
  bool attention_bias = false;       // q, k and v projections carry a bias (Qwen2)

  // The checks every loader runs: positive sizes, heads that divide, known
  // architecture. INVALID_ARGUMENT names the field.
  absl::Status Validate() const;
};

// Reads the config from GGUF metadata ("<arch>.block_count", ...).
// INVALID_ARGUMENT: an unsupported architecture (named) or missing/inconsistent fields.
absl::StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& file);

// Reads a Hugging Face config.json.
absl::StatusOr<ModelConfig> ConfigFromHfJson(absl::string_view json_text);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_MODEL_CONFIG_H_
