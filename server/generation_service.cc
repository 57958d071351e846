#include "server/generation_service.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/call_relay.h"
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
absl::Status CheckQueryAllowed(const Backend& backend, const grpc::ServerContextBase& context,
                               const Request& request) {
  Role needed = Role::kRead;
  for (const ape::v1::InlineContext& inline_context : request.inline_contexts()) {
    if (inline_context.store()) needed = Role::kWrite;
  }
  return backend.auth.Check(context, needed, NamespaceOf(request.namespace_()));
}

// What a call's log line tells of its request: its plan, once it was queued.
struct Queued {
  QueryPlan plan;
  bool queued = false;

  std::string Describe(const ape::v1::Usage& usage, const ape::v1::Timings& timings) const {
    return queued ? server::Describe(plan, usage, timings) : "";
  }
};

// Plans `request` and queues its generation on `channel`, which carries its replies,
// or closes the channel with the reason it cannot run.
void StartGeneration(const Backend& backend, grpc::CallbackServerContext* context,
                     const ape::v1::GenerateRequest& request,
                     const std::shared_ptr<StreamChannel>& channel, Queued& queued) {
  if (absl::Status allowed = CheckQueryAllowed(backend, *context, request); !allowed.ok()) {
    channel->Close(allowed);
    return;
  }
  absl::StatusOr<QueryPlan> planned = PlanGenerate(request, backend.options);
  if (!planned.ok()) {
    channel->Close(planned.status());
    return;
  }
  // Written before the task can end (and the call's log line read them).
  queued.plan = *planned;
  queued.queued = true;
  if (absl::Status submitted = backend.scheduler.Submit(std::make_shared<GenerateTask>(
          backend, *std::move(planned), AliveCheckFor(context), channel));
      !submitted.ok()) {
    queued.queued = false;
    channel->Close(submitted);
  }
}

}  // namespace

grpc::ServerUnaryReactor* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                      const ape::v1::GenerateRequest* request,
                                                      ape::v1::GenerateResponse* response) {
  const absl::Time start = absl::Now();
  auto queued = std::make_shared<Queued>();
  auto channel = std::make_shared<StreamChannel>();
  response->set_request_id(request->request_id());
  // Once: each call of DefaultReactor() makes the call's reactor afresh.
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  RelayToUnary<grpc::ServerUnaryReactor, ape::v1::GenerateStreamResponse>(
      reactor, channel,
      [response](ape::v1::GenerateStreamResponse&& chunk) {
        response->mutable_text()->append(chunk.text());
        response->mutable_token_ids()->MergeFrom(chunk.token_ids());
        response->mutable_logprobs()->MergeFrom(chunk.logprobs());
        if (chunk.has_end()) {
          response->set_finish_reason(chunk.end().finish_reason());
          *response->mutable_usage() = chunk.end().usage();
          *response->mutable_timings() = chunk.end().timings();
          *response->mutable_stored_context_ids() = chunk.end().stored_context_ids();
        }
      },
      [this, queued, response, start,
       request_id = request->request_id()](const absl::Status& status) {
        if (!status.ok()) response->Clear();
        return FinishCall(backend_, "Generate", request_id, status, start,
                          queued->Describe(response->usage(), response->timings()));
      });
  StartGeneration(backend_, context, *request, channel, *queued);
  return reactor;
}

grpc::ServerWriteReactor<ape::v1::GenerateStreamResponse>* GenerationService::GenerateStream(
    grpc::CallbackServerContext* context, const ape::v1::GenerateRequest* request) {
  const absl::Time start = absl::Now();
  auto queued = std::make_shared<Queued>();
  auto end = std::make_shared<ape::v1::StreamEnd>();
  auto channel = std::make_shared<StreamChannel>();
  auto* relay = StreamRelay<ape::v1::GenerateStreamResponse>::Start(
      channel,
      [end](const ape::v1::GenerateStreamResponse& chunk) {
        if (chunk.has_end()) *end = chunk.end();
      },
      [this, queued, end, start, request_id = request->request_id()](const absl::Status& status) {
        return FinishCall(backend_, "GenerateStream", request_id, status, start,
                          queued->Describe(end->usage(), end->timings()));
      });
  StartGeneration(backend_, context, *request, channel, *queued);
  return relay;
}

grpc::ServerUnaryReactor* GenerationService::Score(grpc::CallbackServerContext* context,
                                                   const ape::v1::ScoreRequest* request,
                                                   ape::v1::ScoreResponse* response) {
  const absl::Time start = absl::Now();
  auto queued = std::make_shared<Queued>();
  auto channel = std::make_shared<ReplyChannel<ape::v1::ScoreResponse>>();
  // Once: each call of DefaultReactor() makes the call's reactor afresh.
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  RelayToUnary<grpc::ServerUnaryReactor, ape::v1::ScoreResponse>(
      reactor, channel,
      [response](ape::v1::ScoreResponse&& reply) { *response = std::move(reply); },
      [this, queued, response, start,
       request_id = request->request_id()](const absl::Status& status) {
        if (!status.ok()) response->Clear();
        return FinishCall(backend_, "Score", request_id, status, start,
                          queued->Describe(response->usage(), response->timings()));
      });
  if (absl::Status allowed = CheckQueryAllowed(backend_, *context, *request); !allowed.ok()) {
    channel->Close(allowed);
    return reactor;
  }
  absl::StatusOr<QueryPlan> planned = PlanScore(*request, backend_.options);
  if (!planned.ok()) {
    channel->Close(planned.status());
    return reactor;
  }
  // Written before the task can end (and the call's log line read them).
  queued->plan = *planned;
  queued->queued = true;
  if (absl::Status submitted = backend_.scheduler.Submit(std::make_shared<ScoreTask>(
          backend_, *std::move(planned), AliveCheckFor(context), channel));
      !submitted.ok()) {
    queued->queued = false;
    channel->Close(submitted);
  }
  return reactor;
}

}  // namespace apeserve::server
