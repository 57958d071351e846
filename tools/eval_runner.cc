#include "tools/eval_runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "common/status_macros.h"
#include "model/generator.h"
#include "model/scorer.h"

namespace apeserve::tools {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

}  // namespace

absl::StatusOr<EvalRunner> EvalRunner::Create(const model::Engine& engine,
                                              absl::string_view system) {
  APE_ASSIGN_OR_RETURN(const model::ChatTemplate* chat, engine.chat_template());
  EvalRunner runner(engine, *chat);
  APE_ASSIGN_OR_RETURN(runner.prefix_, engine.EncodePrefix(runner.pieces_.Prefix(system)));
  return runner;
}

absl::StatusOr<PreparedItem> EvalRunner::Prepare(const EvalItem& item) const {
  PreparedItem prepared;
  prepared.item = &item;
  const Clock::time_point start = Clock::now();
  for (const std::string& document : item.documents) {
    APE_ASSIGN_OR_RETURN(model::EncodedContext context,
                         engine_->EncodeContext(prefix_, pieces_.Context(document)));
    prepared.contexts.push_back(std::move(context));
  }
  prepared.encode_seconds = Seconds(start);
  prepared.query = pieces_.Query(item.question);
  prepared.answer = engine_->tokenizer().Encode(item.answer, /*parse_special=*/false);
  for (const std::string& choice : item.choices) {
    prepared.choices.push_back(engine_->tokenizer().Encode(choice, /*parse_special=*/false));
  }
  return prepared;
}

absl::StatusOr<std::unique_ptr<model::Engine::Sequence>> EvalRunner::Start(
    const PreparedItem& item, const model::ApeOptions& options) const {
  std::vector<const model::EncodedContext*> contexts;
  for (const model::EncodedContext& context : item.contexts) contexts.push_back(&context);
  return engine_->StartSequence(prefix_, contexts, options);
}

absl::StatusOr<std::vector<float>> EvalRunner::FirstTokenLogprobs(
    const PreparedItem& item, const model::ApeOptions& options) const {
  APE_ASSIGN_OR_RETURN(auto sequence, Start(item, options));
  APE_ASSIGN_OR_RETURN(const std::vector<float> logits, engine_->Feed(*sequence, item.query));
  return model::LogSoftmax(logits);
}

absl::StatusOr<ModeOutcome> EvalRunner::Run(const PreparedItem& item,
                                            const model::ApeOptions& options,
                                            int max_tokens) const {
  ModeOutcome outcome;
  const Clock::time_point start = Clock::now();
  APE_ASSIGN_OR_RETURN(auto sequence, Start(item, options));
  APE_RETURN_IF_ERROR(engine_->Feed(*sequence, item.query).status());
  outcome.first_token_seconds = Seconds(start);

  // Scores reuse the query's KV: step back one token and feed it again before each
  // continuation.
  const std::vector<int32_t> last{item.query.back()};
  const int64_t before_last = sequence->length() - 1;
  const auto score = [&](const std::vector<int32_t>& continuation) {
    sequence->Truncate(before_last);
    return model::Score(*engine_, *sequence, last, continuation);
  };
  APE_ASSIGN_OR_RETURN(model::ScoreResult gold, score(item.answer));
  outcome.answer_nll = -gold.total_logprob;
  outcome.first_token_logprobs = std::move(gold.first_token_logprobs);

  if (!item.choices.empty()) {
    double best = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < item.choices.size(); ++i) {
      APE_ASSIGN_OR_RETURN(const model::ScoreResult choice, score(item.choices[i]));
      if (choice.total_logprob > best) {
        best = choice.total_logprob;
        outcome.prediction = item.item->choices[i];
      }
    }
    outcome.correct = outcome.prediction == item.item->answer;
    return outcome;
  }
  sequence->Truncate(before_last);
  model::SamplingOptions greedy;
  greedy.max_tokens = max_tokens;
  greedy.stop = {"\n"};
  APE_ASSIGN_OR_RETURN(const model::GenerationResult generated,
                       model::Generate(*engine_, *sequence, last, greedy));
  outcome.prediction = generated.text;
  outcome.correct = absl::StrContains(absl::AsciiStrToLower(generated.text),
                                      absl::AsciiStrToLower(item.item->answer));
  return outcome;
}

double KlDivergence(absl::Span<const float> log_p, absl::Span<const float> log_q) {
  double kl = 0;
  for (size_t i = 0; i < std::min(log_p.size(), log_q.size()); ++i) {
    const double p = std::exp(static_cast<double>(log_p[i]));
    if (p > 0) kl += p * (static_cast<double>(log_p[i]) - log_q[i]);
  }
  return std::max(kl, 0.0);
}

}  // namespace apeserve::tools
