// How apeserve's log lines look: "text" (spdlog's default, for people) or "json" (one
// object per line with time, level and message, for log collectors).
#ifndef APESERVE_SERVER_LOG_FORMAT_H_
#define APESERVE_SERVER_LOG_FORMAT_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace apeserve::server {

// Sets the default logger's format. INVALID_ARGUMENT for a name other than "text" or
// "json".
absl::Status SetLogFormat(absl::string_view name);

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_LOG_FORMAT_H_
