#include "server/log_format.h"

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/str_cat.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/spdlog.h"

namespace apeserve::server {
namespace {

// %* in a pattern: the message as a JSON string, quotes and escapes included (invalid
// UTF-8 replaced), so that any message makes a valid line.
class JsonMessageFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& message, const std::tm& /*time*/,
              spdlog::memory_buf_t& out) override {
    const std::string json =
        nlohmann::json(std::string(message.payload.data(), message.payload.size()))
            .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    out.append(json.data(), json.data() + json.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessageFlag>();
  }
};

}  // namespace

absl::Status SetLogFormat(absl::string_view name) {
  if (name == "text") return absl::OkStatus();
  if (name != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("log format '", name, "' is not one of text, json"));
  }
  auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  formatter->add_flag<JsonMessageFlag>('*').set_pattern(
      R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","logger":"%n","message":%*})");
  spdlog::set_formatter(std::move(formatter));
  return absl::OkStatus();
}

}  // namespace apeserve::server
