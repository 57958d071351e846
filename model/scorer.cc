#include "model/scorer.h"

#include <algorithm>
#include <cmath>

#include "common/status_macros.h"

namespace apeserve::model {

std::vector<float> LogSoftmax(absl::Span<const float> logits) {
  const float top = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (const float logit : logits) sum += std::exp(static_cast<double>(logit) - top);
  const double log_sum = top + std::log(sum);
  std::vector<float> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    out[i] = static_cast<float>(static_cast<double>(logits[i]) - log_sum);
  }
  return out;
}

absl::StatusOr<ScoreResult> Score(const Engine& engine, Engine::Sequence& sequence,
                                  absl::Span<const int32_t> query,
                                  absl::Span<const int32_t> continuation) {
  if (continuation.empty()) return absl::InvalidArgumentError("no continuation to score");
  if (query.empty()) {
    return absl::InvalidArgumentError("scoring needs the query, or its last token at least");
  }
  const auto vocab = static_cast<size_t>(engine.config().vocab_size);
  // The last token is never fed, so Feed does not check it: check them all before
  // spending a forward pass.
  for (const int32_t token : continuation) {
    if (token < 0 || static_cast<size_t>(token) >= vocab) {
      return absl::InvalidArgumentError("continuation token outside the vocabulary");
    }
  }
  // The last continuation token predicts nothing we score: feed all but it.
  std::vector<int32_t> fed(query.begin(), query.end());
  fed.insert(fed.end(), continuation.begin(), continuation.end() - 1);
  APE_ASSIGN_OR_RETURN(const std::vector<float> logits,
                       engine.Feed(sequence, fed, /*all_logits=*/true));
  return ScoreFromLogits(
      absl::MakeConstSpan(logits).subspan((query.size() - 1) * vocab, continuation.size() * vocab),
      vocab, continuation);
}

ScoreResult ScoreFromLogits(absl::Span<const float> logits, size_t vocab,
                            absl::Span<const int32_t> continuation) {
  ScoreResult result;
  for (size_t i = 0; i < continuation.size(); ++i) {
    const absl::Span<const float> row = logits.subspan(i * vocab, vocab);
    std::vector<float> logprobs = LogSoftmax(row);
    const auto token = static_cast<size_t>(continuation[i]);
    result.token_logprobs.push_back(logprobs[token]);
    result.total_logprob += logprobs[token];
    result.greedy.push_back(std::max_element(row.begin(), row.end()) - row.begin() ==
                            static_cast<std::ptrdiff_t>(token));
    if (i == 0) result.first_token_logprobs = std::move(logprobs);
  }
  return result;
}

}  // namespace apeserve::model
