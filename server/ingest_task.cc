#include "server/ingest_task.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "cache/store_keys.h"
#include "common/status_macros.h"
#include "google/protobuf/util/time_util.h"
#include "server/query_plan.h"

namespace apeserve::server {

ape::v1::Context ToContextProto(const cache::StoredContext& document, bool kv_stored,
                                bool include_text) {
  ape::v1::Context context;
  context.set_namespace_(document.namespace_id);
  context.set_context_id(document.id);
  context.set_token_count(static_cast<int32_t>(document.tokens.size()));
  context.mutable_labels()->insert(document.labels.begin(), document.labels.end());
  *context.mutable_create_time() = google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(
      absl::ToUnixMicros(document.created));
  context.set_content_hash(document.content_hash);
  if (include_text) context.set_text(document.text);
  context.set_kv_state(kv_stored ? ape::v1::KV_STATE_STORED : ape::v1::KV_STATE_EVICTED);
  context.set_pinned(document.pinned);
  if (document.expires != absl::InfiniteFuture()) {
    *context.mutable_expire_time() = google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(
        absl::ToUnixMicros(document.expires));
  }
  return context;
}

absl::StatusOr<absl::Duration> TtlOf(const google::protobuf::Duration& ttl,
                                     absl::string_view field) {
  const absl::Duration duration = absl::Seconds(ttl.seconds()) + absl::Nanoseconds(ttl.nanos());
  if (duration < absl::ZeroDuration() || duration > absl::Hours(24 * 365 * 100)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is ", absl::FormatDuration(duration),
                     "; it must be from 0 (never expires) to 100 years"));
  }
  return duration;
}

IngestTask::IngestTask(const Backend& backend, std::vector<ape::v1::CreateContextRequest> contexts,
                       AliveCheck alive,
                       std::shared_ptr<ReplyChannel<ape::v1::BatchCreateContextsResponse>> replies)
    : backend_(backend),
      contexts_(std::move(contexts)),
      alive_(std::move(alive)),
      replies_(std::move(replies)) {}

Task::Phase IngestTask::Prepare(KvBudget& /*kv*/) {
  ape::v1::BatchCreateContextsResponse response;
  response.set_index(static_cast<int32_t>(next_));
  absl::StatusOr<ape::v1::Context> stored = Store(contexts_[next_]);
  if (stored.ok()) {
    tokens_stored_ += stored->token_count();
    *response.mutable_context() = *std::move(stored);
  } else {
    response.mutable_error()->set_code(static_cast<int32_t>(stored.status().code()));
    response.mutable_error()->set_message(std::string(stored.status().message()));
  }
  ++next_;
  response.set_done(static_cast<int32_t>(next_));
  response.set_total(static_cast<int32_t>(contexts_.size()));
  response.set_tokens_stored(tokens_stored_);
  replies_->Send(std::move(response));
  if (next_ < contexts_.size()) return Phase::kPreparing;
  replies_->Close(absl::OkStatus());
  return Phase::kFinished;
}

absl::StatusOr<ape::v1::Context> IngestTask::Store(const ape::v1::CreateContextRequest& request) {
  const RequestLimits& limits = backend_.options.limits;
  cache::ContextInput document{
      .namespace_id = request.namespace_().empty() ? kDefaultNamespace : request.namespace_(),
      .id = request.context_id().empty() ? NewContextId() : request.context_id(),
      .tokens = {},
      .text = request.text(),
      .labels = {request.labels().begin(), request.labels().end()},
      .pinned = request.pinned()};
  if (request.has_ttl()) {
    APE_ASSIGN_OR_RETURN(const absl::Duration ttl, TtlOf(request.ttl(), "ttl"));
    if (ttl > absl::ZeroDuration()) document.expires = absl::Now() + ttl;
  }
  APE_RETURN_IF_ERROR(cache::ValidateNamespace(document.namespace_id));
  APE_RETURN_IF_ERROR(cache::ValidateContextId(document.id));
  if (document.text.empty()) return absl::InvalidArgumentError("text is empty: nothing to store");
  if (document.text.size() > limits.max_context_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("text has ", document.text.size(), " bytes; this server takes at most ",
                     limits.max_context_bytes, " (--max_context_bytes)"));
  }
  APE_ASSIGN_OR_RETURN(const std::shared_ptr<const model::EncodedPrefix> prefix,
                       backend_.prefixes.Get(request.system_prompt()));
  document.tokens = backend_.pieces.Context(document.text);
  const auto tokens = static_cast<int64_t>(document.tokens.size());
  if (limits.max_context_tokens > 0 && tokens > limits.max_context_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the text is ", tokens, " tokens; this server takes at most ",
                     limits.max_context_tokens, " (--max_context_tokens)"));
  }
  const int64_t room =
      backend_.engine.config().max_position - static_cast<int64_t>(prefix->tokens.size()) - 1;
  if (tokens > room) {
    return absl::OutOfRangeError(absl::StrCat(
        "the text is ", tokens, " tokens; after the prefix (", prefix->tokens.size(),
        ") and with room for a query, the model's context of ",
        backend_.engine.config().max_position, " holds ", room, ": split the document"));
  }
  APE_ASSIGN_OR_RETURN(const cache::StoredContext stored,
                       backend_.registry.Put(document, prefix->hash));
  // As GetContext tells it: KV stored after the default prefix (the store's budget may
  // also have evicted it at once).
  APE_ASSIGN_OR_RETURN(const std::shared_ptr<const model::EncodedPrefix> default_prefix,
                       backend_.prefixes.Get(""));
  return ToContextProto(stored, backend_.registry.KvStored(stored, default_prefix->hash),
                        /*include_text=*/false);
}

}  // namespace apeserve::server
