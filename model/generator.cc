#include "model/generator.h"

#include <algorithm>

#include "common/status_macros.h"
#include "model/streaming_decoder.h"
#include "model/tokenizer.h"

namespace apeserve::model {
namespace {

// Tracks generated text against stop strings: text is released once it can no longer
// be the beginning of a stop string.
class StopMatcher {
 public:
  explicit StopMatcher(const std::vector<std::string>& stops) : stops_(stops) {}

  // Adds `piece`; returns the text now safe to release. Sets stopped() when a stop
  // string appeared (the text before it is released, the rest dropped).
  std::string Add(absl::string_view piece) {
    text_.append(piece.data(), piece.size());
    size_t first_stop = std::string::npos;
    for (const std::string& stop : stops_) {
      first_stop = std::min(
          first_stop, text_.find(stop, released_ > stop.size() ? released_ - stop.size() : 0));
    }
    size_t safe = text_.size();
    if (first_stop != std::string::npos) {
      safe = first_stop;
      stopped_ = true;
    } else {
      // Hold back the longest suffix that begins some stop string.
      for (const std::string& stop : stops_) {
        for (size_t length = std::min(stop.size() - 1, text_.size()); length > 0; --length) {
          if (absl::string_view(text_).substr(text_.size() - length) ==
              absl::string_view(stop).substr(0, length)) {
            safe = std::min(safe, text_.size() - length);
            break;
          }
        }
      }
    }
    safe = std::max(safe, released_);
    std::string out = text_.substr(released_, safe - released_);
    released_ = safe;
    if (stopped_) text_.resize(safe);
    return out;
  }

  // The rest, at the end of generation (nothing is a stop string any more).
  std::string Flush() {
    std::string out = text_.substr(released_);
    released_ = text_.size();
    return out;
  }

  bool stopped() const { return stopped_; }
  const std::string& text() const { return text_; }

 private:
  const std::vector<std::string>& stops_;
  std::string text_;
  size_t released_ = 0;
  bool stopped_ = false;
};

}  // namespace

absl::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEndOfSequence:
      return "eos";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

absl::StatusOr<GenerationResult> Generate(const Engine& engine, Engine::Sequence& sequence,
                                          absl::Span<const int32_t> prompt,
                                          const SamplingOptions& options,
                                          const TokenCallback& on_token) {
  APE_RETURN_IF_ERROR(options.Validate());
  const Tokenizer& tokenizer = engine.tokenizer();
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  APE_ASSIGN_OR_RETURN(std::vector<float> logits, engine.Feed(sequence, prompt));

  Sampler sampler(options);
  StreamingDecoder decoder(tokenizer);
  StopMatcher matcher(options.stop);
  GenerationResult result;
  while (true) {
    const Sampler::Choice choice = sampler.Next(logits, history);
    result.tokens.push_back(choice.token);
    result.logprobs.push_back(choice.logprob);
    history.push_back(choice.token);
    const bool eos = !options.ignore_eos && tokenizer.IsEndOfSequence(choice.token);
    // The end-of-sequence token ends the text; it is not part of it.
    std::string released = eos ? "" : matcher.Add(decoder.Push(choice.token));
    if (eos ||
        (!matcher.stopped() && static_cast<int>(result.tokens.size()) == options.max_tokens)) {
      // The end: release what the decoder and the matcher still hold.
      released += matcher.Add(decoder.Finish());
      if (!matcher.stopped()) released += matcher.Flush();
    }
    if (on_token && !on_token(choice.token, choice.logprob, released)) {
      result.finish_reason = FinishReason::kCancelled;
      break;
    }
    if (eos) {
      result.finish_reason = FinishReason::kEndOfSequence;
      break;
    }
    if (matcher.stopped()) {
      result.finish_reason = FinishReason::kStop;
      break;
    }
    if (static_cast<int>(result.tokens.size()) == options.max_tokens) break;
    auto next = engine.Feed(sequence, {choice.token});
    if (!next.ok()) {
      if (next.status().code() == absl::StatusCode::kOutOfRange) break;  // context full: length
      return next.status();
    }
    logits = *std::move(next);
  }
  result.text = matcher.text();
  return result;
}

}  // namespace apeserve::model
