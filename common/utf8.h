// UTF-8 validity, for text that must become a proto3 `string` (protobuf refuses to
// parse one that is not UTF-8, which would fail a whole message).
#ifndef APESERVE_COMMON_UTF8_H_
#define APESERVE_COMMON_UTF8_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace apeserve {

// Whether `text` is well-formed UTF-8 (Unicode's table 3-7), exactly what protobuf
// accepts in a string: lead and continuation bytes in order, no truncated character,
// no overlong form, no surrogate (U+D800..U+DFFF), nothing past U+10FFFF.
inline bool IsValidUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    // The bytes that follow the lead, and the range of the first of them, which is
    // where overlong forms, surrogates and code points past U+10FFFF show; the others
    // are plain continuation bytes.
    size_t more = 0;
    unsigned char low = 0x80, high = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      more = 1;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      more = 2;
      if (lead == 0xE0) low = 0xA0;   // below: overlong
      if (lead == 0xED) high = 0x9F;  // above: surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      more = 3;
      if (lead == 0xF0) low = 0x90;   // below: overlong
      if (lead == 0xF4) high = 0x8F;  // above: past U+10FFFF
    } else {
      return false;  // a continuation byte, C0 and C1 (overlong), F5 to FF
    }
    if (text.size() - i - 1 < more) return false;
    const auto second = static_cast<unsigned char>(text[i + 1]);
    if (second < low || second > high) return false;
    for (size_t k = 2; k <= more; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) >> 6) != 0x2) return false;
    }
    i += 1 + more;
  }
  return true;
}

}  // namespace apeserve

#endif  // APESERVE_COMMON_UTF8_H_
