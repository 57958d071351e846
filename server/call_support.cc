#include "server/call_support.h"

#include <chrono>

#include "absl/strings/escaping.h"
#include "absl/time/clock.h"
#include "server/grpc_status.h"
#include "spdlog/spdlog.h"

namespace apeserve::server {

AliveCheck AliveCheckFor(grpc::ServerContextBase* context) {
  return [context]() -> absl::Status {
    if (context->deadline() <= std::chrono::system_clock::now()) {
      return absl::DeadlineExceededError("the call's deadline passed");
    }
    if (context->IsCancelled()) return absl::CancelledError("the call was cancelled");
    return absl::OkStatus();
  };
}

grpc::Status FinishCall(const Backend& backend, absl::string_view method,
                        absl::string_view request_id, const absl::Status& status, absl::Time start,
                        absl::string_view details) {
  const double milliseconds = absl::ToDoubleMilliseconds(absl::Now() - start);
  backend.counters.CountCall(method, status.code(), milliseconds / 1000);
  const auto level = status.ok() || absl::IsNotFound(status) || absl::IsInvalidArgument(status)
                         ? spdlog::level::info
                         : spdlog::level::warn;
  spdlog::log(level, "call={} request_id={} status={} ms={:.1f}{}{}{}", std::string(method),
              std::string(absl::CHexEscape(request_id)), absl::StatusCodeToString(status.code()),
              milliseconds, details.empty() ? "" : " ", std::string(details),
              status.ok() ? "" : " error=\"" + std::string(status.message()) + "\"");
  return ToGrpcStatus(status);
}

}  // namespace apeserve::server
