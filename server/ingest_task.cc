#include "server/ingest_task.h"

#include <algorithm>
#include <optional>
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

Task::Phase IngestTask::Prepare(KvBudget& kv) {
  if (storing_) {  // woken: the store job ended
    storing_ = false;
    return Answer(std::move(stored_));
  }
  if (!document_.has_value()) {
    absl::StatusOr<Document> document = Begin(contexts_[next_]);
    if (!document.ok()) return Answer(document.status());
    document_ = *std::move(document);
    // An identical document stored its KV already: nothing to encode.
    if (backend_.registry.HasKv(document_->input, document_->prefix->hash)) {
      return StoreOnIoPool();
    }
  }
  absl::StatusOr<bool> started = StartEncoding(kv);
  if (!started.ok()) return Answer(started.status());
  return *started ? Phase::kFeeding : Phase::kPreparing;
}

absl::StatusOr<bool> IngestTask::StartEncoding(KvBudget& kv) {
  const model::Engine& engine = backend_.engine;
  const size_t tokens = document_->prefix->tokens.size() + document_->input.tokens.size();
  APE_ASSIGN_OR_RETURN(std::optional<KvBudget::Reservation> reservation,
                       kv.Reserve(tokens * engine.kv_bytes_per_token()));
  if (!reservation.has_value()) return false;  // waits for running requests to finish
  HoldKv(*std::move(reservation));
  APE_ASSIGN_OR_RETURN(
      model::Engine::SequenceStart start,
      engine.BeginSequence(document_->prefix, {}, {.mode = model::EncodingMode::kSequential}));
  document_->sequence = std::move(start.sequence);
  document_->sequence->Reserve(static_cast<int64_t>(tokens));
  return true;
}

model::Engine::StepInput IngestTask::NextInput(size_t max_tokens) {
  Document& document = *document_;
  const absl::Span<const int32_t> tokens(document.input.tokens);
  document.chunk = std::min(max_tokens, tokens.size() - document.fed);
  return {.sequence = document.sequence.get(),
          .tokens = tokens.subspan(document.fed, document.chunk),
          .logits = model::Engine::Logits::kNone};
}

// By value in the interface: tasks take the logits over.
Task::Phase IngestTask::Fed(
    absl::StatusOr<std::vector<float>> logits) {  // NOLINT(performance-unnecessary-value-param)
  if (!logits.ok()) return Answer(logits.status());
  Document& document = *document_;
  document.fed += std::exchange(document.chunk, 0);
  if (document.fed < document.input.tokens.size()) return Phase::kFeeding;
  return StoreOnIoPool();
}

Task::Phase IngestTask::StoreOnIoPool() {
  storing_ = true;
  backend_.io.Submit([task = shared_from_this()] {
    task->stored_ = task->Store();
    task->Wake();
  });
  return Phase::kWaiting;
}

absl::StatusOr<ape::v1::Context> IngestTask::Store() {
  const Document& document = *document_;
  std::optional<model::EncodedContext> encoded;
  if (document.sequence != nullptr) {
    APE_ASSIGN_OR_RETURN(encoded, backend_.engine.ExportContext(
                                      *document.sequence, *document.prefix, document.input.tokens));
  }
  // One atomic write, durable before it returns (as --sync_writes says); a failure
  // stores nothing.
  APE_ASSIGN_OR_RETURN(const cache::StoredContext stored,
                       backend_.registry.Put(document.input, document.prefix->hash,
                                             encoded.has_value() ? &encoded->kv : nullptr));
  // As GetContext tells it: KV stored after the default prefix (the store's budget may
  // also have evicted it at once).
  APE_ASSIGN_OR_RETURN(const std::shared_ptr<const model::EncodedPrefix> default_prefix,
                       backend_.prefixes.Get(""));
  return ToContextProto(stored, backend_.registry.KvStored(stored, default_prefix->hash),
                        /*include_text=*/false);
}

Task::Phase IngestTask::Answer(absl::StatusOr<ape::v1::Context> result) {
  // The context's sequence and its KV reservation go (on the scheduler's thread).
  document_.reset();
  HoldKv({});
  ape::v1::BatchCreateContextsResponse response;
  response.set_index(static_cast<int32_t>(next_));
  if (result.ok()) {
    tokens_stored_ += result->token_count();
    *response.mutable_context() = *std::move(result);
  } else {
    response.mutable_error()->set_code(static_cast<int32_t>(result.status().code()));
    response.mutable_error()->set_message(std::string(result.status().message()));
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

absl::StatusOr<IngestTask::Document> IngestTask::Begin(
    const ape::v1::CreateContextRequest& request) const {
  const RequestLimits& limits = backend_.options.limits;
  Document document;
  document.input = cache::ContextInput{
      .namespace_id = request.namespace_().empty() ? kDefaultNamespace : request.namespace_(),
      .id = request.context_id().empty() ? NewContextId() : request.context_id(),
      .tokens = {},
      .text = request.text(),
      .labels = {request.labels().begin(), request.labels().end()},
      .pinned = request.pinned()};
  cache::ContextInput& input = document.input;
  if (request.has_ttl()) {
    APE_ASSIGN_OR_RETURN(const absl::Duration ttl, TtlOf(request.ttl(), "ttl"));
    if (ttl > absl::ZeroDuration()) input.expires = absl::Now() + ttl;
  }
  APE_RETURN_IF_ERROR(cache::ValidateNamespace(input.namespace_id));
  APE_RETURN_IF_ERROR(cache::ValidateContextId(input.id));
  if (input.text.empty()) return absl::InvalidArgumentError("text is empty: nothing to store");
  if (input.text.size() > limits.max_context_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("text has ", input.text.size(), " bytes; this server takes at most ",
                     limits.max_context_bytes, " (--max_context_bytes)"));
  }
  APE_ASSIGN_OR_RETURN(document.prefix, backend_.prefixes.Get(request.system_prompt()));
  input.tokens = backend_.pieces.Context(input.text);
  const auto tokens = static_cast<int64_t>(input.tokens.size());
  if (limits.max_context_tokens > 0 && tokens > limits.max_context_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the text is ", tokens, " tokens; this server takes at most ",
                     limits.max_context_tokens, " (--max_context_tokens)"));
  }
  const model::EncodedPrefix& prefix = *document.prefix;
  const int64_t room =
      backend_.engine.config().max_position - static_cast<int64_t>(prefix.tokens.size()) - 1;
  if (tokens > room) {
    return absl::OutOfRangeError(absl::StrCat(
        "the text is ", tokens, " tokens; after the prefix (", prefix.tokens.size(),
        ") and with room for a query, the model's context of ",
        backend_.engine.config().max_position, " holds ", room, ": split the document"));
  }
  return document;
}

}  // namespace apeserve::server
