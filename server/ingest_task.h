// The work of CreateContext, UploadContext and BatchCreateContexts: each context is
// tokenized as the chat template places a document, encoded after the shared prefix
// (of its system prompt) and stored with its KV in one atomic write; one context per
// scheduler round, each answered as it is stored.
// Thread-safety: used by the scheduler's thread only, apart from the reply channel.
#ifndef APESERVE_SERVER_INGEST_TASK_H_
#define APESERVE_SERVER_INGEST_TASK_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ape/v1/context.pb.h"
#include "cache/stored_context.h"
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

class IngestTask final : public Task {
 public:
  IngestTask(const Backend& backend, std::vector<ape::v1::CreateContextRequest> contexts,
             AliveCheck alive,
             std::shared_ptr<ReplyChannel<ape::v1::BatchCreateContextsResponse>> replies);

  Phase Prepare(KvBudget& kv) override;
  absl::Status Alive() const override { return alive_(); }
  void Abort(const absl::Status& status) override { replies_->Close(status); }

 private:
  absl::StatusOr<ape::v1::Context> Store(const ape::v1::CreateContextRequest& request);

  const Backend& backend_;
  const std::vector<ape::v1::CreateContextRequest> contexts_;
  const AliveCheck alive_;
  std::shared_ptr<ReplyChannel<ape::v1::BatchCreateContextsResponse>> replies_;
  size_t next_ = 0;
  int64_t tokens_stored_ = 0;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_INGEST_TASK_H_
