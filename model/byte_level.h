// GPT-2's byte-level alphabet: every byte gets a printable Unicode character so that
// BPE vocabularies can spell arbitrary bytes as text. Bytes that are printable in
// Latin-1 stand for themselves; the other 68 map to U+0100 onwards.
#ifndef APESERVE_MODEL_BYTE_LEVEL_H_
#define APESERVE_MODEL_BYTE_LEVEL_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace apeserve::model {

// The code point that spells `byte`.
char32_t ByteToCodePoint(uint8_t byte);

// The UTF-8 spelling of `byte` (one or two bytes).
const std::string& ByteSpelling(uint8_t byte);

// Reads a spelled token back into raw bytes; nullopt when it holds a character outside
// the alphabet (or is not valid UTF-8).
std::optional<std::string> UnspellBytes(absl::string_view spelled);

// The raw bytes spelled as the alphabet's characters.
std::string SpellBytes(absl::string_view raw);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_BYTE_LEVEL_H_
