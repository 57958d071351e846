// Reading untrusted JSON documents (tokenizer.json and its configs, config.json,
// safetensors headers) without crashes or undefined behaviour:
// * nlohmann's parser is iterative, but copying, comparing and dumping a value recurse
//   once per level, so a document that nests thousands of arrays overflows the stack
//   later; ParseJsonObject refuses such documents up front.
// * get<int64_t>() converts a float with a plain C++ cast, undefined for a value int64
//   cannot hold ("vocab_size": 1e30); JsonInteger checks first.
// Internal to model/. Thread-safety: pure functions.
#ifndef APESERVE_MODEL_JSON_READING_H_
#define APESERVE_MODEL_JSON_READING_H_

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

// Arrays and objects inside one another; the files we read nest fewer than 10.
inline constexpr int kMaxJsonDepth = 64;

// `text` parsed as a JSON object. INVALID_ARGUMENT naming `what` (e.g.
// "tokenizer.json") when it is not JSON, not an object, or nests deeper than
// kMaxJsonDepth.
inline absl::StatusOr<nlohmann::json> ParseJsonObject(absl::string_view text,
                                                      absl::string_view what) {
  bool too_deep = false;
  // Called for every value as it is parsed; the parser itself keeps no recursion, so
  // refusing here (the value is dropped, the parse goes on) is safe at any depth.
  const nlohmann::json::parser_callback_t bound =
      [&too_deep](int depth, nlohmann::json::parse_event_t /*event*/, nlohmann::json& /*parsed*/) {
        if (depth > kMaxJsonDepth) too_deep = true;
        return !too_deep;
      };
  nlohmann::json json =
      nlohmann::json::parse(text.begin(), text.end(), bound, /*allow_exceptions=*/false);
  if (too_deep) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " nests arrays and objects deeper than ", kMaxJsonDepth, " levels"));
  }
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is not a JSON object"));
  }
  return json;
}

// `value` as an int64: an integer int64 holds, or a float with such an integral value
// (2048.0, as some writers spell integers). nullopt for anything else: a fraction, a
// value out of range, or not a number.
inline std::optional<int64_t> JsonInteger(const nlohmann::json& value) {
  if (value.is_number_unsigned()) {
    const auto unsigned_value = value.get<uint64_t>();
    if (unsigned_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return std::nullopt;
    }
    return static_cast<int64_t>(unsigned_value);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    const double real = value.get<double>();
    // [-2^63, 2^63) are exactly the doubles int64 holds; NaN fails both comparisons.
    if (real >= -0x1p63 && real < 0x1p63 && std::trunc(real) == real) {
      return static_cast<int64_t>(real);
    }
  }
  return std::nullopt;
}

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_JSON_READING_H_
