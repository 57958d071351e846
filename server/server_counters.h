// What the server counts while it runs, for AdminService.GetStats and the metrics
// endpoint: calls by method and status code with their latency, time to first token
// by mode, tokens by where their KV came from, and generations stopped early.
// Thread-safety: all methods may be called concurrently.
#ifndef APESERVE_SERVER_SERVER_COUNTERS_H_
#define APESERVE_SERVER_SERVER_COUNTERS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/histogram.h"

namespace apeserve::server {

class ServerCounters {
 public:
  void CountCall(absl::string_view method, absl::StatusCode code, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++calls_[{std::string(method), code}];
    latency_.try_emplace(std::string(method), Histogram::Seconds()).first->second.Observe(seconds);
  }
  void ObserveTimeToFirstToken(absl::string_view mode, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    time_to_first_token_.try_emplace(std::string(mode), Histogram::Seconds())
        .first->second.Observe(seconds);
  }
  std::map<std::string, Histogram::Snapshot> latency() const { return Take(latency_); }
  std::map<std::string, Histogram::Snapshot> time_to_first_token() const {
    return Take(time_to_first_token_);
  }
  // (method, code) -> calls finished so.
  std::map<std::pair<std::string, absl::StatusCode>, int64_t> calls() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return calls_;
  }

  std::atomic<int64_t> generated_tokens{0};
  std::atomic<int64_t> context_tokens_device{0};
  std::atomic<int64_t> context_tokens_host{0};
  std::atomic<int64_t> context_tokens_store{0};
  std::atomic<int64_t> context_tokens_recomputed{0};
  // Generations stopped because the caller went away or its deadline passed.
  std::atomic<int64_t> cancelled_generations{0};
  // Set once shutdown begins: new calls are refused, running ones finish.
  std::atomic<bool> draining{false};

 private:
  std::map<std::string, Histogram::Snapshot> Take(
      const std::map<std::string, Histogram>& histograms) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::map<std::string, Histogram::Snapshot> snapshots;
    for (const auto& [name, histogram] : histograms) snapshots.emplace(name, histogram.Take());
    return snapshots;
  }

  mutable std::mutex mutex_;
  std::map<std::pair<std::string, absl::StatusCode>, int64_t> calls_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, Histogram> latency_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, Histogram> time_to_first_token_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_SERVER_COUNTERS_H_
