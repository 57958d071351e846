// Score: the teacher-forced log-probabilities of a given continuation under any
// encoding mode, the basis of likelihood-based evaluation and of in-context
// classification (pick the label whose continuation scores highest).
// Thread-safety: as the Engine's; one sequence per call.
#ifndef APESERVE_MODEL_SCORER_H_
#define APESERVE_MODEL_SCORER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/engine.h"

namespace apeserve::model {

struct ScoreResult {
  std::vector<float> token_logprobs;  // log p(continuation[i] | everything before it)
  double total_logprob = 0;           // their sum
  // Whether each continuation token is the most likely one where it stands.
  std::vector<bool> greedy;
  // log p(· | query) over the whole vocabulary: the distribution of the first
  // continuation token, for comparing modes (e.g. their KL divergence).
  std::vector<float> first_token_logprobs;
};

// Feeds `query` and then `continuation` to `sequence` and scores the continuation.
// `query` may be empty when the sequence already holds tokens fed since it started
// (their last logits are not kept, so at least one query token is needed otherwise).
// INVALID_ARGUMENT: no continuation, no query on a fresh sequence, or bad ids.
// OUT_OF_RANGE: the model's context is too short.
absl::StatusOr<ScoreResult> Score(const Engine& engine, Engine::Sequence& sequence,
                                  absl::Span<const int32_t> query,
                                  absl::Span<const int32_t> continuation);

// The scores of `continuation` from `logits`, one row of `vocab` per continuation
// token: the logits of the position that predicts it. Ids must be in the vocabulary.
ScoreResult ScoreFromLogits(absl::Span<const float> logits, size_t vocab,
                            absl::Span<const int32_t> continuation);

// log-softmax of `logits` in double precision, returned as floats.
std::vector<float> LogSoftmax(absl::Span<const float> logits);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_SCORER_H_
