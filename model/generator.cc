#include "model/generator.h"

#include <algorithm>

#include "common/status_macros.h"
#include "model/streaming_decoder.h"
#include "model/tokenizer.h"

namespace apeserve::model {

// Tracks generated text against stop strings: text is released once it can no longer
// be the beginning of a stop string.
class TokenGenerator::StopMatcher {
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

TokenGenerator::TokenGenerator(const Tokenizer& tokenizer, const SamplingOptions& options,
                               absl::Span<const int32_t> prompt)
    : tokenizer_(tokenizer),
      options_(options),
      sampler_(options_),
      decoder_(tokenizer),
      matcher_(std::make_unique<StopMatcher>(options_.stop)),
      history_(prompt.begin(), prompt.end()) {}

TokenGenerator::~TokenGenerator() = default;

const std::string& TokenGenerator::text() const { return matcher_->text(); }

std::string TokenGenerator::Finish() {
  std::string rest = matcher_->Add(decoder_.Finish());
  if (!matcher_->stopped()) rest += matcher_->Flush();
  return rest;
}

TokenGenerator::Step TokenGenerator::Next(absl::Span<const float> logits) {
  const Sampler::Choice choice = sampler_.Next(logits, history_);
  tokens_.push_back(choice.token);
  logprobs_.push_back(choice.logprob);
  history_.push_back(choice.token);
  Step step{.token = choice.token, .logprob = choice.logprob};
  const bool eos = !options_.ignore_eos && tokenizer_.IsEndOfSequence(choice.token);
  const bool at_limit = static_cast<int>(tokens_.size()) >= options_.max_tokens;
  // The end-of-sequence token ends the text; it is not part of it.
  step.text = eos ? "" : matcher_->Add(decoder_.Push(choice.token));
  if (eos || (!matcher_->stopped() && at_limit)) {
    // The end: release what the decoder and the matcher still hold.
    step.text += matcher_->Add(decoder_.Finish());
    if (!matcher_->stopped()) step.text += matcher_->Flush();
  }
  if (eos) {
    step.finished = true;
    step.finish_reason = FinishReason::kEndOfSequence;
  } else if (matcher_->stopped()) {
    step.finished = true;
    step.finish_reason = FinishReason::kStop;
  } else if (at_limit) {
    step.finished = true;
    step.finish_reason = FinishReason::kLength;
  }
  return step;
}

absl::StatusOr<GenerationResult> Generate(const Engine& engine, Engine::Sequence& sequence,
                                          absl::Span<const int32_t> prompt,
                                          const SamplingOptions& options,
                                          const TokenCallback& on_token) {
  APE_RETURN_IF_ERROR(options.Validate());
  APE_ASSIGN_OR_RETURN(std::vector<float> logits, engine.Feed(sequence, prompt));
  TokenGenerator generator(engine.tokenizer(), options, prompt);
  GenerationResult result;
  while (true) {
    TokenGenerator::Step step = generator.Next(logits);
    if (on_token && !on_token(step.token, step.logprob, step.text)) {
      result.finish_reason = FinishReason::kCancelled;
      break;
    }
    if (step.finished) {
      result.finish_reason = step.finish_reason;
      break;
    }
    auto next = engine.Feed(sequence, {step.token});
    if (!next.ok()) {
      if (next.status().code() == absl::StatusCode::kOutOfRange) {  // context full: length
        generator.Finish();  // what was held back belongs to the text
        break;
      }
      return next.status();
    }
    logits = *std::move(next);
  }
  result.tokens = generator.tokens();
  result.logprobs = generator.logprobs();
  result.text = generator.text();
  return result;
}

}  // namespace apeserve::model
