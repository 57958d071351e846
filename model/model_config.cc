#include "model/model_config.h"

#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/gguf_file.h"
#include "model/json_reading.h"

namespace apeserve::model {
namespace {

bool SupportedArchitecture(absl::string_view architecture) {
  return architecture == "llama" || architecture == "mistral" || architecture == "qwen2";
}

absl::Status Positive(absl::string_view field, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("model config: ", field, " is ", value, "; it must be positive"));
}

// The integer `key` of the JSON object `object`, or `fallback` when the key is absent
// (nullopt: required). INVALID_ARGUMENT naming the key when it is absent and required,
// or holds anything but an integer that int64 holds.
absl::StatusOr<int64_t> IntegerField(const nlohmann::json& object, const char* key,
                                     std::optional<int64_t> fallback = std::nullopt) {
  const auto it = object.find(key);
  if (it == object.end()) {
    if (fallback.has_value()) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat("config.json has no '", key, "'"));
  }
  const std::optional<int64_t> value = JsonInteger(*it);
  if (!value.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: ", key,
                                                   " must be an integer, not ",
                                                   it->is_number() ? it->dump() : it->type_name()));
  }
  return *value;
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  if (!SupportedArchitecture(architecture)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model architecture '", architecture,
                     "' is not supported; apeserve runs llama, mistral and qwen2"));
  }
  APE_RETURN_IF_ERROR(Positive("vocab_size", vocab_size));
  APE_RETURN_IF_ERROR(Positive("hidden_size", hidden_size));
  APE_RETURN_IF_ERROR(Positive("intermediate_size", intermediate_size));
  APE_RETURN_IF_ERROR(Positive("num_layers", num_layers));
  APE_RETURN_IF_ERROR(Positive("num_heads", num_heads));
  APE_RETURN_IF_ERROR(Positive("num_kv_heads", num_kv_heads));
  APE_RETURN_IF_ERROR(Positive("head_dim", head_dim));
  APE_RETURN_IF_ERROR(Positive("max_position", max_position));
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model config: ", num_heads,
                                                   " attention heads are not a multiple of ",
                                                   num_kv_heads, " key-value heads"));
  }
  if (head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: head_dim ", head_dim, " is odd; rotary embedding needs pairs"));
  }
  if (!(rms_norm_eps > 0) || !(rope_theta > 0) || !(rope_scaling.factor > 0)) {
    return absl::InvalidArgumentError(
        "model config: rms_norm_eps, rope_theta and the rope scaling factor must be positive");
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& file) {
  ModelConfig config;
  APE_ASSIGN_OR_RETURN(config.architecture, file.GetString("general.architecture"));
  if (!SupportedArchitecture(config.architecture)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model file '", file.path(), "' holds architecture '", config.architecture,
                     "', which apeserve does not run (llama, mistral and qwen2 are supported)"));
  }
  const std::string& a = config.architecture;
  APE_ASSIGN_OR_RETURN(config.hidden_size, file.GetInt(a + ".embedding_length"));
  APE_ASSIGN_OR_RETURN(config.intermediate_size, file.GetInt(a + ".feed_forward_length"));
  APE_ASSIGN_OR_RETURN(config.num_layers, file.GetInt(a + ".block_count"));
  APE_ASSIGN_OR_RETURN(config.num_heads, file.GetInt(a + ".attention.head_count"));
  config.num_kv_heads = config.num_heads;
  if (file.Find(a + ".attention.head_count_kv") != nullptr) {
    APE_ASSIGN_OR_RETURN(config.num_kv_heads, file.GetInt(a + ".attention.head_count_kv"));
  }
  APE_ASSIGN_OR_RETURN(config.max_position, file.GetInt(a + ".context_length"));
  APE_ASSIGN_OR_RETURN(config.rms_norm_eps, file.GetFloat(a + ".attention.layer_norm_rms_epsilon"));
  if (file.Find(a + ".rope.freq_base") != nullptr) {
    APE_ASSIGN_OR_RETURN(config.rope_theta, file.GetFloat(a + ".rope.freq_base"));
  }
  config.head_dim = config.num_heads > 0 ? config.hidden_size / config.num_heads : 0;
  if (file.Find(a + ".attention.key_length") != nullptr) {
    APE_ASSIGN_OR_RETURN(config.head_dim, file.GetInt(a + ".attention.key_length"));
  }
  // Rotary embedding over part of each head (as in some Phi and GPT-NeoX models) is
  // not implemented; refuse it rather than compute wrong positions.
  if (file.Find(a + ".rope.dimension_count") != nullptr) {
    APE_ASSIGN_OR_RETURN(const int64_t rotary, file.GetInt(a + ".rope.dimension_count"));
    if (rotary != config.head_dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("model file '", file.path(), "' rotates ", rotary, " of ", config.head_dim,
                       " head dimensions; partial rotary embedding is not supported"));
    }
  }
  if (file.Find(a + ".vocab_size") != nullptr) {
    APE_ASSIGN_OR_RETURN(config.vocab_size, file.GetInt(a + ".vocab_size"));
  } else {
    APE_ASSIGN_OR_RETURN(const std::vector<std::string> tokens,
                         file.GetStringArray("tokenizer.ggml.tokens"));
    config.vocab_size = static_cast<int64_t>(tokens.size());
  }
  if (file.Find(a + ".rope.scaling.type") != nullptr) {
    APE_ASSIGN_OR_RETURN(const std::string type, file.GetString(a + ".rope.scaling.type"));
    if (type == "linear") {
      config.rope_scaling.type = RopeScaling::Type::kLinear;
      APE_ASSIGN_OR_RETURN(config.rope_scaling.factor, file.GetFloat(a + ".rope.scaling.factor"));
    } else if (type != "none") {
      return absl::InvalidArgumentError(absl::StrCat(
          "model file '", file.path(), "': rope scaling '", type, "' is not supported"));
    }
  }
  // llama.cpp writes Llama 3 frequency scaling as a tensor (rope_freqs), which the
  // weight loader applies; and leaves out the output matrix when it is the embedding.
  config.tie_word_embeddings = file.FindTensor("output.weight") == nullptr;
  config.attention_bias = config.architecture == "qwen2";
  APE_RETURN_IF_ERROR(config.Validate());
  return config;
}

absl::StatusOr<ModelConfig> ConfigFromHfJson(absl::string_view json_text) {
  APE_ASSIGN_OR_RETURN(const nlohmann::json json, ParseJsonObject(json_text, "config.json"));
  ModelConfig config;
  try {
    config.architecture = json.value("model_type", "");
    if (!SupportedArchitecture(config.architecture)) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: model_type '", config.architecture,
                       "' is not supported (llama, mistral and qwen2 are)"));
    }
    APE_ASSIGN_OR_RETURN(config.vocab_size, IntegerField(json, "vocab_size"));
    APE_ASSIGN_OR_RETURN(config.hidden_size, IntegerField(json, "hidden_size"));
    APE_ASSIGN_OR_RETURN(config.intermediate_size, IntegerField(json, "intermediate_size"));
    APE_ASSIGN_OR_RETURN(config.num_layers, IntegerField(json, "num_hidden_layers"));
    APE_ASSIGN_OR_RETURN(config.num_heads, IntegerField(json, "num_attention_heads"));
    APE_ASSIGN_OR_RETURN(config.num_kv_heads,
                         IntegerField(json, "num_key_value_heads", config.num_heads));
    if (json.contains("head_dim") && !json.at("head_dim").is_null()) {
      APE_ASSIGN_OR_RETURN(config.head_dim, IntegerField(json, "head_dim"));
    } else if (config.num_heads > 0) {
      config.head_dim = config.hidden_size / config.num_heads;
    }
    APE_ASSIGN_OR_RETURN(config.max_position,
                         IntegerField(json, "max_position_embeddings", int64_t{2048}));
    config.rms_norm_eps = json.value("rms_norm_eps", 1e-6);
    config.tie_word_embeddings = json.value("tie_word_embeddings", false);
    config.attention_bias = config.architecture == "qwen2" || json.value("attention_bias", false);

    // transformers 5 writes "rope_parameters"; earlier versions "rope_theta" and
    // "rope_scaling".
    nlohmann::json rope = json.contains("rope_parameters") && json.at("rope_parameters").is_object()
                              ? json.at("rope_parameters")
                              : nlohmann::json::object();
    if (json.contains("rope_scaling") && json.at("rope_scaling").is_object()) {
      rope.update(json.at("rope_scaling"));
    }
    config.rope_theta = rope.value("rope_theta", json.value("rope_theta", 10000.0));
    const std::string type = rope.value("rope_type", rope.value("type", std::string("default")));
    if (type == "llama3") {
      config.rope_scaling.type = RopeScaling::Type::kLlama3;
      config.rope_scaling.factor = rope.at("factor").get<double>();
      config.rope_scaling.low_freq_factor = rope.value("low_freq_factor", 1.0);
      config.rope_scaling.high_freq_factor = rope.value("high_freq_factor", 4.0);
      APE_ASSIGN_OR_RETURN(config.rope_scaling.original_max_position,
                           IntegerField(rope, "original_max_position_embeddings", int64_t{8192}));
    } else if (type == "linear") {
      config.rope_scaling.type = RopeScaling::Type::kLinear;
      config.rope_scaling.factor = rope.at("factor").get<double>();
    } else if (type != "default") {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: rope type '", type, "' is not supported"));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: ", e.what()));
  }
  APE_RETURN_IF_ERROR(config.Validate());
  return config;
}

}  // namespace apeserve::model
