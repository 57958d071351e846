// What the server counts while it runs, for AdminService.GetStats (and, later, the
// metrics endpoint): calls by method and status code, tokens by where their KV came
// from, and generations stopped early. Thread-safety: all methods may be called
// concurrently.
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

namespace apeserve::server {

class ServerCounters {
 public:
  void CountCall(absl::string_view method, absl::StatusCode code) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++calls_[{std::string(method), code}];
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
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, absl::StatusCode>, int64_t> calls_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_SERVER_COUNTERS_H_
