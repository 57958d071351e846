// Small UTF-8 helpers for the tokenizer: decode one code point, encode one, and find
// how much of a byte string is complete, valid UTF-8.
#ifndef APESERVE_MODEL_UTF8_H_
#define APESERVE_MODEL_UTF8_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace apeserve::model {

// Decodes the code point at `offset` and advances past it; nullopt (offset unchanged)
// for an invalid, overlong or truncated sequence.
std::optional<char32_t> DecodeUtf8(absl::string_view text, size_t& offset);

std::string EncodeUtf8(char32_t code_point);

// The length of the longest prefix of `bytes` that does not end inside a multi-byte
// character that could still be completed by more bytes. Invalid bytes count as
// complete (they will never become valid), so a stream never stalls on them.
size_t CompleteUtf8Prefix(absl::string_view bytes);

// `bytes` with every invalid or truncated sequence replaced by U+FFFD, so the result is
// always valid UTF-8.
std::string SanitizeUtf8(absl::string_view bytes);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_UTF8_H_
