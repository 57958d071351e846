// Chooses the next token from a model's logits: greedy, or sampled after a repetition
// penalty, temperature, top-k, top-p and min-p, applied in that order. The same seed
// gives the same choices. Not thread-safe: one sampler per sequence.
#ifndef APESERVE_MODEL_SAMPLER_H_
#define APESERVE_MODEL_SAMPLER_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace apeserve::model {

struct SamplingOptions {
  // Softmax temperature; 0 picks the most likely token (greedy). Default: 0.
  float temperature = 0.0F;
  // Keep only the k most likely tokens; 0 keeps all. Default: 0.
  int top_k = 0;
  // Keep the most likely tokens whose probabilities sum to at least p. Default: 1 (all).
  float top_p = 1.0F;
  // Drop tokens less likely than min_p times the most likely one. Default: 0 (none).
  float min_p = 0.0F;
  // Tokens already in the sequence have positive logits divided and negative ones
  // multiplied by this (CTRL's penalty); 1 is off. Default: 1.
  float repetition_penalty = 1.0F;
  // Seed of the random choices. Default: 0.
  uint64_t seed = 0;
  // Tokens to generate at most. Default: 256.
  int max_tokens = 256;
  // Generation stops before the first of these strings appears in the text.
  std::vector<std::string> stop;
  // Keep generating past the end-of-sequence token. Default: false.
  bool ignore_eos = false;

  // INVALID_ARGUMENT naming the field, its value and the allowed range.
  absl::Status Validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);

  struct Choice {
    int32_t token;
    float logprob;  // log-probability under the model's own distribution (no transforms)
  };

  // Chooses from `logits` ([vocab]); `history` are the sequence's tokens so far.
  Choice Next(absl::Span<const float> logits, absl::Span<const int32_t> history);

 private:
  double Uniform();  // in [0, 1), the same on every platform for a given seed

  SamplingOptions options_;
  std::mt19937_64 random_;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_SAMPLER_H_
