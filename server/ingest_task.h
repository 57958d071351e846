// The work of CreateContext, UploadContext and BatchCreateContexts: each context is
// tokenized as the chat template places a document, encoded after the shared prefix
// (of its system prompt) through the scheduler's batched steps, in chunks beside the
// other requests' work (never one long pass that freezes the streams), then stored
// with its KV in one atomic, durable write on the I/O pool, while the steps go on.
// Each context is answered once it is stored; one that fails stores nothing.
// Thread-safety: used by the scheduler's thread, apart from the reply channel and the
// store job (on the I/O pool while the task waits).
#ifndef APESERVE_SERVER_INGEST_TASK_H_
#define APESERVE_SERVER_INGEST_TASK_H_

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ape/v1/context.pb.h"
#include "cache/stored_context.h"
#include "model/engine.h"
#include "server/backend.h"
#include "server/query_task.h"
#include "server/reply_channel.h"
#include "server/scheduler.h"

namespace apeserve::server {

// A stored document as the API shows it; `kv_stored` fills kv_state.
ape::v1::Context ToContextProto(const cache::StoredContext& document, bool kv_stored,
                                bool include_text);

// A time-to-live from the API; INVALID_ARGUMENT naming `field` when negative or past
// 100 years.
absl::StatusOr<absl::Duration> TtlOf(const google::protobuf::Duration& ttl,
                                     absl::string_view field);

class IngestTask final : public Task, public std::enable_shared_from_this<IngestTask> {
 public:
  IngestTask(const Backend& backend, std::vector<ape::v1::CreateContextRequest> contexts,
             AliveCheck alive,
             std::shared_ptr<ReplyChannel<ape::v1::BatchCreateContextsResponse>> replies);

  Phase Prepare(KvBudget& kv) override;
  bool ingesting() const override { return true; }
  model::Engine::StepInput NextInput(size_t max_tokens) override;
  Phase Fed(absl::StatusOr<std::vector<float>> logits) override;
  absl::Status Alive() const override { return alive_(); }
  void Abort(const absl::Status& status) override { replies_->Close(status); }

 private:
  // The context being stored.
  struct Document {
    cache::ContextInput input;
    std::shared_ptr<const model::EncodedPrefix> prefix;
    // Encoding it: the sequence, and how many of its tokens were fed (and are in the
    // step in flight). None when the store already holds its KV.
    std::unique_ptr<model::Engine::Sequence> sequence;
    size_t fed = 0;
    size_t chunk = 0;
  };

  // Checks and tokenizes a request (what the store will hold).
  absl::StatusOr<Document> Begin(const ape::v1::CreateContextRequest& request) const;
  // Starts encoding `document_` once its KV fits `kv`: false while it waits.
  absl::StatusOr<bool> StartEncoding(KvBudget& kv);
  // Stores `document_` on the I/O pool (and its KV, from its sequence when it has one);
  // the task waits until it is durable.
  Phase StoreOnIoPool();
  // Runs on the I/O pool.
  absl::StatusOr<ape::v1::Context> Store();
  // Answers the current context with `result` and moves to the next.
  Phase Answer(absl::StatusOr<ape::v1::Context> result);

  const Backend& backend_;
  const std::vector<ape::v1::CreateContextRequest> contexts_;
  const AliveCheck alive_;
  std::shared_ptr<ReplyChannel<ape::v1::BatchCreateContextsResponse>> replies_;
  size_t next_ = 0;
  int64_t tokens_stored_ = 0;
  std::optional<Document> document_;
  // Set while the store job runs; its result, written before it wakes the task.
  bool storing_ = false;
  absl::StatusOr<ape::v1::Context> stored_ = absl::UnknownError("not stored");
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_INGEST_TASK_H_
