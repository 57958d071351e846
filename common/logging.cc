#include "common/logging.h"

#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace apeserve {

void LogToStderr() { spdlog::set_default_logger(spdlog::stderr_color_mt("apeserve")); }

void LogInfo(absl::string_view message) {
  spdlog::info("{}", std::string_view(message.data(), message.size()));
}

void LogWarning(absl::string_view message) {
  spdlog::warn("{}", std::string_view(message.data(), message.size()));
}

}  // namespace apeserve
