#include "server/metrics_endpoint.h"

#include <httplib.h>

#include <chrono>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/histogram.h"

namespace apeserve::server {
namespace {

// One metric family: HELP and TYPE once, then its samples.
class Family {
 public:
  Family(std::string& out, absl::string_view name, absl::string_view type, absl::string_view help)
      : out_(out), name_(name) {
    absl::StrAppend(&out_, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  }
  // `labels` already formatted: `method="Generate",code="OK"` (or empty).
  void Sample(absl::string_view labels, double value, absl::string_view suffix = "") {
    absl::StrAppend(&out_, name_, suffix, labels.empty() ? "" : "{", labels,
                    labels.empty() ? "" : "}", " ", absl::StrFormat("%.17g", value), "\n");
  }
  void Histogram(absl::string_view labels, const Histogram::Snapshot& snapshot) {
    const std::string prefix = labels.empty() ? "" : absl::StrCat(labels, ",");
    for (size_t i = 0; i < snapshot.bounds.size(); ++i) {
      Sample(absl::StrCat(prefix, "le=\"", absl::StrFormat("%g", snapshot.bounds[i]), "\""),
             static_cast<double>(snapshot.cumulative[i]), "_bucket");
    }
    Sample(absl::StrCat(prefix, "le=\"+Inf\""), static_cast<double>(snapshot.count), "_bucket");
    Sample(labels, snapshot.sum, "_sum");
    Sample(labels, static_cast<double>(snapshot.count), "_count");
  }

 private:
  std::string& out_;
  std::string name_;
};

std::string Label(absl::string_view key, absl::string_view value) {
  return absl::StrCat(key, "=\"", value, "\"");
}

}  // namespace

std::string RenderMetrics(const Backend& backend) {
  std::string out;
  const ServerCounters& counters = backend.counters;
  {
    Family family(out, "apeserve_requests_total", "counter",
                  "Calls finished, by method and status code.");
    for (const auto& [key, count] : counters.calls()) {
      family.Sample(absl::StrCat(Label("method", key.first), ",",
                                 Label("code", absl::StatusCodeToString(key.second))),
                    static_cast<double>(count));
    }
  }
  {
    Family family(out, "apeserve_request_duration_seconds", "histogram",
                  "Time from receipt to the end of a call, by method.");
    for (const auto& [method, snapshot] : counters.latency()) {
      family.Histogram(Label("method", method), snapshot);
    }
  }
  {
    Family family(out, "apeserve_time_to_first_token_seconds", "histogram",
                  "Time from receipt to the first generated token, by encoding mode.");
    for (const auto& [mode, snapshot] : counters.time_to_first_token()) {
      family.Histogram(Label("mode", mode), snapshot);
    }
  }
  Family(out, "apeserve_generated_tokens_total", "counter", "Tokens generated or scored.")
      .Sample("", static_cast<double>(counters.generated_tokens.load()));
  {
    Family family(out, "apeserve_context_tokens_total", "counter",
                  "Context tokens of requests, by where their KV came from.");
    family.Sample(Label("source", "device"),
                  static_cast<double>(counters.context_tokens_device.load()));
    family.Sample(Label("source", "host"),
                  static_cast<double>(counters.context_tokens_host.load()));
    family.Sample(Label("source", "store"),
                  static_cast<double>(counters.context_tokens_store.load()));
    family.Sample(Label("source", "recomputed"),
                  static_cast<double>(counters.context_tokens_recomputed.load()));
  }
  Family(out, "apeserve_cancelled_generations_total", "counter",
         "Generations stopped because the client went away or the deadline passed.")
      .Sample("", static_cast<double>(counters.cancelled_generations.load()));
  const SchedulerLoad load = backend.scheduler.load();
  Family(out, "apeserve_queued_requests", "gauge", "Requests waiting for the engine.")
      .Sample("", static_cast<double>(load.queued));
  Family(out, "apeserve_running_requests", "gauge", "Requests the engine is working on.")
      .Sample("", static_cast<double>(load.running));
  Family(out, "apeserve_ingest_queued_requests", "gauge",
         "Ingestion requests (documents to encode and store) waiting for the engine.")
      .Sample("", static_cast<double>(load.ingest_queued));
  Family(out, "apeserve_ingesting_requests", "gauge",
         "Ingestion requests the engine is working on.")
      .Sample("", static_cast<double>(load.ingesting));
  Family(out, "apeserve_encoded_tokens_total", "counter",
         "Document tokens encoded for storage through the engine's steps (per step: divide "
         "by apeserve_engine_steps_total).")
      .Sample("", static_cast<double>(load.encoded_tokens));
  Family(out, "apeserve_running_kv_bytes", "gauge",
         "KV bytes the running requests hold: each one's own tokens, and the stored KV they "
         "read in place once however many read it.")
      .Sample("", static_cast<double>(load.running_kv_bytes));
  Family(out, "apeserve_engine_steps_total", "counter", "Batched engine steps run.")
      .Sample("", static_cast<double>(load.steps));
  Family(out, "apeserve_stepped_sequences_total", "counter",
         "Sequences the engine steps advanced (per step: the batch).")
      .Sample("", static_cast<double>(load.stepped_sequences));

  const cache::RegistryStats registry = backend.registry.stats();
  const std::pair<const char*, const cache::TierStats*> tiers[] = {
      {"device", &registry.device}, {"host", &registry.host}, {"store", &registry.store}};
  const auto per_tier = [&](absl::string_view name, absl::string_view type, absl::string_view help,
                            uint64_t cache::TierStats::*field) {
    Family family(out, name, type, help);
    for (const auto& [tier, stats] : tiers) {
      family.Sample(Label("tier", tier), static_cast<double>(stats->*field));
    }
  };
  per_tier("apeserve_kv_hits_total", "counter", "KV found in a tier.", &cache::TierStats::hits);
  per_tier("apeserve_kv_misses_total", "counter", "KV looked for in a tier and not there.",
           &cache::TierStats::misses);
  per_tier("apeserve_kv_evictions_total", "counter", "KV pushed out of a tier by its budget.",
           &cache::TierStats::evictions);
  per_tier("apeserve_kv_bytes", "gauge", "Bytes of KV a tier holds.", &cache::TierStats::bytes);
  per_tier("apeserve_kv_entries", "gauge", "KV entries a tier holds.", &cache::TierStats::entries);
  Family(out, "apeserve_kv_rebuilds_total", "counter",
         "KV recomputed from stored tokens (evicted, another prefix or model, or damaged).")
      .Sample("", static_cast<double>(registry.rebuilds));
  Family(out, "apeserve_contexts_stored_total", "counter", "Contexts stored.")
      .Sample("", static_cast<double>(registry.contexts_stored));
  Family(out, "apeserve_contexts_deleted_total", "counter", "Contexts deleted (expired included).")
      .Sample("", static_cast<double>(registry.contexts_deleted));
  Family(out, "apeserve_contexts_expired_total", "counter", "Contexts deleted at their expiry.")
      .Sample("", static_cast<double>(registry.contexts_expired));
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& address,
                                                                        const Backend& backend) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' is not host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  endpoint->http_ = std::make_unique<httplib::Server>();
  endpoint->http_->Get(
      "/metrics", [&backend](const httplib::Request&, httplib::Response& response) {
        response.set_content(RenderMetrics(backend), "text/plain; version=0.0.4; charset=utf-8");
      });
  const int bound = port == 0 ? endpoint->http_->bind_to_any_port(host)
                              : (endpoint->http_->bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on '", address, "': address invalid or in use"));
  }
  endpoint->address_ = absl::StrCat(colon > 0 ? address.substr(0, colon) : "", ":", bound);
  httplib::Server* http = endpoint->http_.get();
  MetricsEndpoint* self = endpoint.get();
  endpoint->thread_ = std::thread([http, self] {
    http->listen_after_bind();
    self->listening_ended_ = true;
  });
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() {
  if (http_ == nullptr) return;
  // httplib ignores stop() until its listen loop runs: wait for it to start (or end).
  while (!http_->is_running() && !listening_ended_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace apeserve::server
