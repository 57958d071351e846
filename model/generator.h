// Decoding: sample token after token until the length limit, the end-of-sequence
// token, a stop string, or the caller says stop. Text is streamed in valid UTF-8
// pieces, holding back what might be the start of a stop string.
//
// TokenGenerator is one step at a time (a scheduler interleaves many of them and
// feeds the engine itself); Generate() is the whole loop for one sequence.
// Thread-safety: as the Engine's; one sequence and one TokenGenerator per call.
#ifndef APESERVE_MODEL_GENERATOR_H_
#define APESERVE_MODEL_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/engine.h"
#include "model/sampler.h"
#include "model/streaming_decoder.h"
#include "model/tokenizer.h"

namespace apeserve::model {

enum class FinishReason { kLength, kEndOfSequence, kStop, kCancelled };

absl::string_view FinishReasonName(FinishReason reason);

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated, stop string and EOS included
  std::vector<float> logprobs;  // of each generated token
  std::string text;             // generated text, up to (not including) a stop string
  FinishReason finish_reason = FinishReason::kLength;
};

// Chooses the tokens of one generation from the logits it is given, and turns them
// into text. Owns no sequence: the caller feeds each chosen token to the engine and
// passes the logits that come back.
class TokenGenerator {
 public:
  // `prompt` is the history the repetition penalty sees. `options` must be valid.
  TokenGenerator(const Tokenizer& tokenizer, const SamplingOptions& options,
                 absl::Span<const int32_t> prompt);
  ~TokenGenerator();
  TokenGenerator(const TokenGenerator&) = delete;
  TokenGenerator& operator=(const TokenGenerator&) = delete;

  struct Step {
    int32_t token = 0;
    float logprob = 0;  // under the model's own distribution
    // The text this token released (possibly empty): complete UTF-8 characters that can
    // no longer be the start of a stop string.
    std::string text = {};
    // Set when this token ends the generation; then `finish_reason` says why.
    bool finished = false;
    FinishReason finish_reason = FinishReason::kLength;
  };

  // Chooses the next token from `logits` ([vocab]).
  Step Next(absl::Span<const float> logits);
  // Ends the generation early (e.g. the model's context is full): the text still held
  // back (a partial character, a possible start of a stop string), released.
  std::string Finish();

  // What has been generated so far.
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const std::vector<float>& logprobs() const { return logprobs_; }
  // The text up to (not including) a stop string.
  const std::string& text() const;

 private:
  class StopMatcher;

  const Tokenizer& tokenizer_;
  const SamplingOptions options_;
  Sampler sampler_;
  StreamingDecoder decoder_;
  std::unique_ptr<StopMatcher> matcher_;
  std::vector<int32_t> history_;
  std::vector<int32_t> tokens_;
  std::vector<float> logprobs_;
};

// Receives each token as it is generated and the text it released (possibly empty);
// returning false cancels the generation.
using TokenCallback = std::function<bool(int32_t token, float logprob, absl::string_view text)>;

// Feeds `prompt` to `sequence` (which may already hold tokens), then generates.
// INVALID_ARGUMENT: bad options or prompt tokens. OUT_OF_RANGE: the context is full
// before the first token.
absl::StatusOr<GenerationResult> Generate(const Engine& engine, Engine::Sequence& sequence,
                                          absl::Span<const int32_t> prompt,
                                          const SamplingOptions& options,
                                          const TokenCallback& on_token = nullptr);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_GENERATOR_H_
