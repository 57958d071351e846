// Runs evaluation items through the engine in each encoding mode: the contexts are
// encoded once per item and shared by PARALLEL and APE; SEQUENTIAL recomputes them.
// Measures correctness, the gold answer's negative log-likelihood (through Score), the
// first answer token's distribution (for KL between modes) and the time to the first
// token. Thread-safety: one runner per thread.
#ifndef APESERVE_TOOLS_EVAL_RUNNER_H_
#define APESERVE_TOOLS_EVAL_RUNNER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/ape_options.h"
#include "model/encoded_context.h"
#include "model/engine.h"
#include "model/prompt_pieces.h"
#include "tools/eval_tasks.h"

namespace apeserve::tools {

// An item with its pieces tokenized and its contexts encoded.
struct PreparedItem {
  const EvalItem* item = nullptr;
  std::vector<model::EncodedContext> contexts;
  std::vector<int32_t> query;
  std::vector<int32_t> answer;
  std::vector<std::vector<int32_t>> choices;
  double encode_seconds = 0;  // all contexts
};

struct ModeOutcome {
  bool correct = false;
  std::string prediction;                   // generated text, or the chosen label
  double answer_nll = 0;                    // -log p(gold answer | prompt)
  std::vector<float> first_token_logprobs;  // log p(first answer token | prompt)
  double first_token_seconds = 0;           // sequence start + query prefill
};

class EvalRunner {
 public:
  // `system` is the system prompt of every item. FAILED_PRECONDITION: the model has no
  // chat template.
  static absl::StatusOr<EvalRunner> Create(const model::Engine& engine, absl::string_view system);

  absl::StatusOr<PreparedItem> Prepare(const EvalItem& item) const;

  // The first answer token's distribution only (what calibration compares).
  absl::StatusOr<std::vector<float>> FirstTokenLogprobs(const PreparedItem& item,
                                                        const model::ApeOptions& options) const;

  // Everything: `max_tokens` greedy tokens decide a generative item.
  absl::StatusOr<ModeOutcome> Run(const PreparedItem& item, const model::ApeOptions& options,
                                  int max_tokens) const;

 private:
  EvalRunner(const model::Engine& engine, const model::ChatTemplate& chat)
      : engine_(&engine), pieces_(engine.tokenizer(), chat) {}

  absl::StatusOr<std::unique_ptr<model::Engine::Sequence>> Start(
      const PreparedItem& item, const model::ApeOptions& options) const;

  const model::Engine* engine_;
  model::PromptPieces pieces_;
  model::EncodedPrefix prefix_;
};

// KL(p || q) of two log-probability vectors over the same vocabulary, in nats.
double KlDivergence(absl::Span<const float> log_p, absl::Span<const float> log_q);

}  // namespace apeserve::tools

#endif  // APESERVE_TOOLS_EVAL_RUNNER_H_
