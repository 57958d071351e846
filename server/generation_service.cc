#include "server/generation_service.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/call_support.h"
#include "server/query_plan.h"
#include "server/query_task.h"
#include "server/reply_channel.h"

namespace apeserve::server {
namespace {

using StreamChannel = ReplyChannel<ape::v1::GenerateStreamResponse>;

// The log line's summary of a finished request.
std::string Describe(const QueryPlan& plan, const ape::v1::Usage& usage,
                     const ape::v1::Timings& timings) {
  return absl::StrFormat(
      "mode=%s contexts=%d context_tokens=%d store=%d host=%d device=%d recomputed=%d "
      "generated=%d ttft_ms=%.1f",
      model::EncodingModeName(plan.ape.mode), plan.contexts.size(), usage.context_tokens(),
      usage.context_tokens_store(), usage.context_tokens_host(), usage.context_tokens_device(),
      usage.context_tokens_recomputed(), usage.generated_tokens(),
      timings.time_to_first_token_ms());
}

// OK when the caller may query `request`'s namespace, and write to it if the request
// stores inline contexts.
template <typename Request>
absl::Status CheckQueryAllowed(const Backend& backend, const grpc::ServerContext& context,
                               const Request& request) {
  Role needed = Role::kRead;
  for (const ape::v1::InlineContext& inline_context : request.inline_contexts()) {
    if (inline_context.store()) needed = Role::kWrite;
  }
  return backend.auth.Check(context, needed, NamespaceOf(request.namespace_()));
}

// Plans `request` and queues its generation; the channel then carries its replies.
absl::StatusOr<std::shared_ptr<StreamChannel>> StartGeneration(
    const Backend& backend, grpc::ServerContext* context, const ape::v1::GenerateRequest& request,
    QueryPlan& plan) {
  if (absl::Status allowed = CheckQueryAllowed(backend, *context, request); !allowed.ok()) {
    return allowed;
  }
  absl::StatusOr<QueryPlan> planned = PlanGenerate(request, backend.options);
  if (!planned.ok()) return planned.status();
  plan = *planned;
  auto channel = std::make_shared<StreamChannel>();
  if (absl::Status queued = backend.scheduler.Submit(std::make_shared<GenerateTask>(
          backend, *std::move(planned), AliveCheckFor(context), channel));
      !queued.ok()) {
    return queued;
  }
  return channel;
}

}  // namespace

grpc::Status GenerationService::Generate(grpc::ServerContext* context,
                                         const ape::v1::GenerateRequest* request,
                                         ape::v1::GenerateResponse* response) {
  const absl::Time start = absl::Now();
  QueryPlan plan;
  auto channel = StartGeneration(backend_, context, *request, plan);
  if (!channel.ok())
    return FinishCall(backend_, "Generate", request->request_id(), channel.status(), start);
  response->set_request_id(request->request_id());
  while (std::optional<ape::v1::GenerateStreamResponse> chunk = (*channel)->Receive()) {
    response->mutable_text()->append(chunk->text());
    response->mutable_token_ids()->MergeFrom(chunk->token_ids());
    response->mutable_logprobs()->MergeFrom(chunk->logprobs());
    if (chunk->has_end()) {
      response->set_finish_reason(chunk->end().finish_reason());
      *response->mutable_usage() = chunk->end().usage();
      *response->mutable_timings() = chunk->end().timings();
      *response->mutable_stored_context_ids() = chunk->end().stored_context_ids();
    }
  }
  const absl::Status status = (*channel)->status();
  if (!status.ok()) response->Clear();
  return FinishCall(backend_, "Generate", request->request_id(), status, start,
                    Describe(plan, response->usage(), response->timings()));
}

grpc::Status GenerationService::GenerateStream(
    grpc::ServerContext* context, const ape::v1::GenerateRequest* request,
    grpc::ServerWriter<ape::v1::GenerateStreamResponse>* writer) {
  const absl::Time start = absl::Now();
  QueryPlan plan;
  auto channel = StartGeneration(backend_, context, *request, plan);
  if (!channel.ok()) {
    return FinishCall(backend_, "GenerateStream", request->request_id(), channel.status(), start);
  }
  ape::v1::StreamEnd end;
  bool writable = true;
  while (std::optional<ape::v1::GenerateStreamResponse> chunk = (*channel)->Receive()) {
    if (chunk->has_end()) end = chunk->end();
    // A failed write means the client is gone: the task sees the cancellation at its
    // next step; the rest of its replies are drained unsent.
    if (writable) writable = writer->Write(*chunk);
  }
  return FinishCall(backend_, "GenerateStream", request->request_id(), (*channel)->status(), start,
                    Describe(plan, end.usage(), end.timings()));
}

grpc::Status GenerationService::Score(grpc::ServerContext* context,
                                      const ape::v1::ScoreRequest* request,
                                      ape::v1::ScoreResponse* response) {
  const absl::Time start = absl::Now();
  if (absl::Status allowed = CheckQueryAllowed(backend_, *context, *request); !allowed.ok()) {
    return FinishCall(backend_, "Score", request->request_id(), allowed, start);
  }
  absl::StatusOr<QueryPlan> plan = PlanScore(*request, backend_.options);
  if (!plan.ok()) return FinishCall(backend_, "Score", request->request_id(), plan.status(), start);
  const QueryPlan copy = *plan;
  auto channel = std::make_shared<ReplyChannel<ape::v1::ScoreResponse>>();
  absl::Status status = backend_.scheduler.Submit(
      std::make_shared<ScoreTask>(backend_, *std::move(plan), AliveCheckFor(context), channel));
  if (status.ok()) {
    while (std::optional<ape::v1::ScoreResponse> reply = channel->Receive()) *response = *reply;
    status = channel->status();
  }
  if (!status.ok()) response->Clear();
  return FinishCall(backend_, "Score", request->request_id(), status, start,
                    Describe(copy, response->usage(), response->timings()));
}

}  // namespace apeserve::server
