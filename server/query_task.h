// The work of one Generate / GenerateStream / Score call on the scheduler's thread.
// Prepared piece by piece: the shared prefix, then the stored contexts, read from the
// fastest tier that has their KV on the I/O pool while the task waits, and the inline
// ones encoded, then the sequence, once its KV fits the running requests' budget. Then fed through
// the scheduler's batched steps: the prompt in chunks (in SEQUENTIAL mode the contexts' tokens,
// then the query), then one generated token, or one chunk of a scored continuation, per step.
// Thread-safety: used by the scheduler's thread only, apart from the reply channel.
#ifndef APESERVE_SERVER_QUERY_TASK_H_
#define APESERVE_SERVER_QUERY_TASK_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "ape/v1/generation.pb.h"
#include "cache/context_registry.h"
#include "model/encoded_context.h"
#include "model/engine.h"
#include "model/generator.h"
#include "server/backend.h"
#include "server/query_plan.h"
#include "server/reply_channel.h"
#include "server/scheduler.h"

namespace apeserve::server {

// OK while the caller waits; CANCELLED or DEADLINE_EXCEEDED once it does not.
using AliveCheck = std::function<absl::Status()>;

class QueryTask : public Task, public std::enable_shared_from_this<QueryTask> {
 public:
  QueryTask(const Backend& backend, QueryPlan plan, AliveCheck alive);

  Phase Prepare(KvBudget& kv) final;
  absl::Status Alive() const final { return alive_(); }
  void Abort(const absl::Status& status) final { Fail(status); }

 protected:
  // Ends the call with an error.
  virtual void Fail(const absl::Status& status) = 0;

  // The next chunk of the prompt, at most `max_tokens`, with `last_logits` when it
  // ends the prompt (else none).
  model::Engine::StepInput PromptChunk(size_t max_tokens, model::Engine::Logits last_logits);
  // Takes the chunk PromptChunk gave as fed; true when the whole prompt is.
  bool PromptChunkFed();
  bool prompt_fed() const { return prompt_done_ == prompt_.size(); }

  const Backend& backend_;
  const QueryPlan plan_;
  std::vector<int32_t> query_tokens_;
  // Score only: each continuation's tokens.
  std::vector<std::vector<int32_t>> continuation_tokens_;
  // Tokens at the query's end that the prompt leaves out (Score feeds the last one
  // with each continuation, to get the logits that predict it).
  size_t query_tokens_held_back_ = 0;
  std::unique_ptr<model::Engine::Sequence> sequence_;
  ape::v1::Usage usage_;
  ape::v1::Timings timings_;
  // Ids of the inline contexts this request stored.
  std::vector<std::string> stored_context_ids_;
  // When the sequence started: prefill_ms runs from here to the prompt's logits.
  absl::Time sequence_started_ = absl::InfinitePast();

  double MillisecondsSince(absl::Time start) const {
    return absl::ToDoubleMilliseconds(absl::Now() - start);
  }

 private:
  absl::Status LoadPrefix();
  // Reads every stored context the request names on the I/O pool into `fetched_`,
  // then wakes the task.
  void FetchStoredContexts();
  absl::Status LoadNextContext();
  // NOT_FOUND naming every unknown id of the request (the first one found included).
  absl::Status Missing(const absl::Status& first);
  // Starts the sequence once its KV fits `kv`: false while it waits.
  absl::StatusOr<bool> StartSequence(KvBudget& kv);

  const AliveCheck alive_;
  // Stores the inline contexts to store on the I/O pool, then wakes the task.
  void StoreInlineContexts();

  // Inline contexts to store, once the prompt is known to fit.
  struct InlineToStore {
    const QueryContext* context;
    std::shared_ptr<const model::EncodedContext> encoded;
  };
  std::vector<InlineToStore> to_store_;
  absl::Status inline_stored_;  // written by the store job before it wakes the task
  enum class Stage {
    kPrefix,
    kContexts,
    kStart,
    kStoring,  // the sequence started; the inline contexts are being stored
  } stage_ = Stage::kPrefix;
  std::shared_ptr<const model::EncodedPrefix> prefix_;
  // The contexts as loaded; shared KV stays alive while the sequence starts.
  std::vector<std::shared_ptr<const model::EncodedContext>> contexts_;
  size_t next_context_ = 0;
  // The stored contexts as the I/O pool read them, by index (inline ones: unset).
  std::vector<absl::StatusOr<cache::LoadedContext>> fetched_;
  absl::Time fetch_started_ = absl::InfinitePast();
  bool fetch_timed_ = false;
  // What the sequence is fed before the answer, and how much of it has been.
  std::vector<int32_t> prompt_;
  size_t prompt_done_ = 0;
  size_t prompt_chunk_ = 0;  // the chunk in flight
};

class GenerateTask final : public QueryTask {
 public:
  GenerateTask(const Backend& backend, QueryPlan plan, AliveCheck alive,
               std::shared_ptr<ReplyChannel<ape::v1::GenerateStreamResponse>> replies);

  bool decoding() const override { return generator_.has_value(); }
  model::Engine::StepInput NextInput(size_t max_tokens) override;
  Phase Fed(absl::StatusOr<std::vector<float>> logits) override;

 private:
  void Fail(const absl::Status& status) override;
  // Streams the token chosen from `logits`; true when it ends the answer.
  bool Emit(const std::vector<float>& logits);
  // The stream's last message.
  void Finish(model::FinishReason reason);

  std::shared_ptr<ReplyChannel<ape::v1::GenerateStreamResponse>> replies_;
  std::optional<model::TokenGenerator> generator_;
  absl::Time first_token_ = absl::InfinitePast();
};

class ScoreTask final : public QueryTask {
 public:
  ScoreTask(const Backend& backend, QueryPlan plan, AliveCheck alive,
            std::shared_ptr<ReplyChannel<ape::v1::ScoreResponse>> replies);

  model::Engine::StepInput NextInput(size_t max_tokens) override;
  Phase Fed(absl::StatusOr<std::vector<float>> logits) override;

 private:
  void Fail(const absl::Status& status) override;
  // Scores the continuation whose logits are complete; true when it was the last.
  bool ScoreContinuation();

  std::shared_ptr<ReplyChannel<ape::v1::ScoreResponse>> replies_;
  ape::v1::ScoreResponse response_;
  int64_t start_length_ = 0;  // the sequence after the prompt
  // The continuation being fed: the query's last token, then all its tokens but the
  // last; how much of it has been fed, and the logits that came back.
  std::vector<int32_t> feeding_;
  size_t feeding_done_ = 0;
  size_t feeding_chunk_ = 0;
  std::vector<float> rows_;
  absl::Time continuation_started_ = absl::InfinitePast();
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_QUERY_TASK_H_
