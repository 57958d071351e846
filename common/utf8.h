// UTF-8 validity, for text that must become a proto3 `string` (protobuf refuses to
// parse one that is not UTF-8, which would fail a whole message).
#ifndef APESERVE_COMMON_UTF8_H_
#define APESERVE_COMMON_UTF8_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace apeserve {

// Whether `text` is well-formed UTF-8: lead and continuation bytes in order, no
// truncated character. (Overlong forms and surrogates are not looked for.)
inline bool IsValidUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    const size_t length = byte < 0x80           ? 1
                          : (byte >> 5) == 0x6  ? 2
                          : (byte >> 4) == 0xE  ? 3
                          : (byte >> 3) == 0x1E ? 4
                                                : 0;
    if (length == 0 || i + length > text.size()) return false;
    for (size_t k = 1; k < length; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) >> 6) != 0x2) return false;
    }
    i += length;
  }
  return true;
}

}  // namespace apeserve

#endif  // APESERVE_COMMON_UTF8_H_
