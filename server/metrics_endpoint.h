// Prometheus metrics over HTTP (GET /metrics, text exposition format 0.0.4), on a port
// of its own, served by cpp-httplib on its own threads.
// Thread-safety: Start and Stop from one thread; scrapes run concurrently with serving.
#ifndef APESERVE_SERVER_METRICS_ENDPOINT_H_
#define APESERVE_SERVER_METRICS_ENDPOINT_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/backend.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace apeserve::server {

// Everything the server counts, in the Prometheus text format.
std::string RenderMetrics(const Backend& backend);

class MetricsEndpoint {
 public:
  // Listens on `address` (host:port; port 0 picks one). UNAVAILABLE when it cannot
  // bind; INVALID_ARGUMENT for an address without a port.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& address,
                                                                const Backend& backend);
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;
  ~MetricsEndpoint();  // stops serving

  // host:port actually bound.
  const std::string& address() const { return address_; }

 private:
  MetricsEndpoint() = default;

  std::unique_ptr<httplib::Server> http_;
  std::atomic<bool> listening_ended_{false};
  std::thread thread_;
  std::string address_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_METRICS_ENDPOINT_H_
