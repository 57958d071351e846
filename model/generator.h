// The decoding loop: feed a prompt, then sample token after token until the length
// limit, the end-of-sequence token, a stop string, or the caller says stop. Text is
// streamed in valid UTF-8 pieces, holding back what might be the start of a stop
// string. Thread-safety: as the Engine's; one sequence per call.
#ifndef APESERVE_MODEL_GENERATOR_H_
#define APESERVE_MODEL_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/engine.h"
#include "model/sampler.h"

namespace apeserve::model {

enum class FinishReason { kLength, kEndOfSequence, kStop, kCancelled };

absl::string_view FinishReasonName(FinishReason reason);

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated, stop string and EOS included
  std::vector<float> logprobs;  // of each generated token
  std::string text;             // generated text, up to (not including) a stop string
  FinishReason finish_reason = FinishReason::kLength;
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
