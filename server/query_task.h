// The work of one Generate / GenerateStream / Score call, step by step on the
// scheduler's thread: the shared prefix, then one context per step (loaded from the
// fastest tier that has its KV, or encoded), then the sequence, then the query and
// one token (or one scored continuation) per step. Between steps the caller's
// cancellation and deadline are checked, so a stopped call stops promptly.
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

class QueryTask : public Task {
 public:
  QueryTask(const Backend& backend, QueryPlan plan, AliveCheck alive);

  bool Step() final;
  absl::Status Alive() const final { return alive_(); }
  void Abort(const absl::Status& status) final;

 protected:
  // After the sequence holds prefix and contexts: the next step of the answer.
  // Returns true when finished (the reply is sent).
  virtual absl::StatusOr<bool> Answer() = 0;
  // Ends the call with an error.
  virtual void Fail(const absl::Status& status) = 0;

  const Backend& backend_;
  const QueryPlan plan_;
  std::vector<int32_t> query_tokens_;
  // Score only: each continuation's tokens.
  std::vector<std::vector<int32_t>> continuation_tokens_;
  std::unique_ptr<model::Engine::Sequence> sequence_;
  ape::v1::Usage usage_;
  ape::v1::Timings timings_;
  // Ids of the inline contexts this request stored.
  std::vector<std::string> stored_context_ids_;

  double MillisecondsSince(absl::Time start) const {
    return absl::ToDoubleMilliseconds(absl::Now() - start);
  }

 private:
  absl::Status Prepare();
  absl::Status LoadNextContext();
  // NOT_FOUND naming every unknown id of the request (the first one found included).
  absl::Status Missing(const absl::Status& first);
  absl::Status StartSequence();

  const AliveCheck alive_;
  // Inline contexts to store, once the prompt is known to fit.
  struct InlineToStore {
    const QueryContext* context;
    std::vector<int32_t> tokens;
    model::KvSegment kv;
  };
  std::vector<InlineToStore> to_store_;
  enum class Stage { kPrepare, kContexts, kStart, kAnswer } stage_ = Stage::kPrepare;
  std::shared_ptr<const model::EncodedPrefix> prefix_;
  // The contexts as loaded; `holders` keeps shared KV alive while the sequence starts.
  std::vector<std::shared_ptr<const model::EncodedContext>> contexts_;
  size_t next_context_ = 0;
};

class GenerateTask final : public QueryTask {
 public:
  GenerateTask(const Backend& backend, QueryPlan plan, AliveCheck alive,
               std::shared_ptr<ReplyChannel<ape::v1::GenerateStreamResponse>> replies);

 private:
  absl::StatusOr<bool> Answer() override;
  void Fail(const absl::Status& status) override;
  // The stream's last message.
  void Finish(model::FinishReason reason);

  std::shared_ptr<ReplyChannel<ape::v1::GenerateStreamResponse>> replies_;
  std::optional<model::TokenGenerator> generator_;
  std::vector<float> logits_;
  absl::Time first_token_ = absl::InfinitePast();
};

class ScoreTask final : public QueryTask {
 public:
  ScoreTask(const Backend& backend, QueryPlan plan, AliveCheck alive,
            std::shared_ptr<ReplyChannel<ape::v1::ScoreResponse>> replies);

 private:
  absl::StatusOr<bool> Answer() override;
  void Fail(const absl::Status& status) override;

  std::shared_ptr<ReplyChannel<ape::v1::ScoreResponse>> replies_;
  ape::v1::ScoreResponse response_;
  int64_t start_length_ = 0;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_QUERY_TASK_H_
