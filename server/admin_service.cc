#include "server/admin_service.h"

#include <optional>

#include "server/grpc_status.h"

namespace apeserve::server {
namespace {

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context,
                               const absl::Status& status = absl::OkStatus()) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

void Fill(const cache::TierStats& from, ape::v1::TierStats& to) {
  to.set_entries(static_cast<int64_t>(from.entries));
  to.set_bytes(static_cast<int64_t>(from.bytes));
  to.set_capacity_bytes(static_cast<int64_t>(from.capacity_bytes));
  to.set_hits(static_cast<int64_t>(from.hits));
  to.set_misses(static_cast<int64_t>(from.misses));
  to.set_evictions(static_cast<int64_t>(from.evictions));
  to.set_expirations(static_cast<int64_t>(from.expirations));
}

}  // namespace

grpc::ServerUnaryReactor* AdminService::GetServerInfo(
    grpc::CallbackServerContext* context, const ape::v1::GetServerInfoRequest* /*request*/,
    ape::v1::ServerInfo* response) {
  if (absl::Status allowed = backend_.auth.Check(*context, Role::kRead, std::nullopt);
      !allowed.ok()) {
    return Done(context, allowed);
  }
  *response = info_;
  return Done(context);
}

grpc::ServerUnaryReactor* AdminService::GetModelInfo(
    grpc::CallbackServerContext* context, const ape::v1::GetModelInfoRequest* /*request*/,
    ape::v1::ModelInfo* response) {
  if (absl::Status allowed = backend_.auth.Check(*context, Role::kRead, std::nullopt);
      !allowed.ok()) {
    return Done(context, allowed);
  }
  *response = model_;
  return Done(context);
}

grpc::ServerUnaryReactor* AdminService::GetStats(grpc::CallbackServerContext* context,
                                                 const ape::v1::GetStatsRequest* /*request*/,
                                                 ape::v1::Stats* response) {
  if (absl::Status allowed = backend_.auth.Check(*context, Role::kAdmin, std::nullopt);
      !allowed.ok()) {
    return Done(context, allowed);
  }
  for (const auto& [key, count] : backend_.counters.calls()) {
    ape::v1::MethodStats* method = response->add_methods();
    method->set_method(key.first);
    method->set_code(absl::StatusCodeToString(key.second));
    method->set_count(count);
  }
  const ServerCounters& counters = backend_.counters;
  response->set_generated_tokens(counters.generated_tokens.load());
  response->set_context_tokens_device(counters.context_tokens_device.load());
  response->set_context_tokens_host(counters.context_tokens_host.load());
  response->set_context_tokens_store(counters.context_tokens_store.load());
  response->set_context_tokens_recomputed(counters.context_tokens_recomputed.load());
  response->set_cancelled_generations(counters.cancelled_generations.load());
  const cache::RegistryStats registry = backend_.registry.stats();
  Fill(registry.device, *response->mutable_device_tier());
  Fill(registry.host, *response->mutable_host_tier());
  Fill(registry.store, *response->mutable_store_tier());
  response->set_kv_rebuilds(static_cast<int64_t>(registry.rebuilds));
  response->set_kv_corrupt(static_cast<int64_t>(registry.corrupt_kv));
  response->set_contexts_stored(static_cast<int64_t>(registry.contexts_stored));
  response->set_contexts_deleted(static_cast<int64_t>(registry.contexts_deleted));
  response->set_kv_shared(static_cast<int64_t>(registry.kv_shared));
  response->set_contexts_expired(static_cast<int64_t>(registry.contexts_expired));
  response->set_pinned_contents(static_cast<int64_t>(registry.pinned_contents));
  return Done(context);
}

grpc::ServerUnaryReactor* AdminService::GetLoad(grpc::CallbackServerContext* context,
                                                const ape::v1::GetLoadRequest* /*request*/,
                                                ape::v1::Load* response) {
  if (absl::Status allowed = backend_.auth.Check(*context, Role::kAdmin, std::nullopt);
      !allowed.ok()) {
    return Done(context, allowed);
  }
  const SchedulerLoad load = backend_.scheduler.load();
  response->set_queued(static_cast<int32_t>(load.queued));
  response->set_running(static_cast<int32_t>(load.running));
  response->set_max_queued(static_cast<int32_t>(backend_.scheduler.options().max_queued));
  response->set_max_running(static_cast<int32_t>(backend_.scheduler.options().max_running));
  response->set_running_kv_bytes(static_cast<int64_t>(load.running_kv_bytes));
  response->set_steps(static_cast<int64_t>(load.steps));
  response->set_stepped_sequences(static_cast<int64_t>(load.stepped_sequences));
  response->set_ingest_queued(static_cast<int32_t>(load.ingest_queued));
  response->set_ingesting(static_cast<int32_t>(load.ingesting));
  response->set_encoded_tokens(static_cast<int64_t>(load.encoded_tokens));
  response->set_max_running_kv_bytes(
      static_cast<int64_t>(backend_.scheduler.options().max_running_kv_bytes));
  response->set_draining(load.stopping || backend_.counters.draining.load());
  return Done(context);
}

}  // namespace apeserve::server
