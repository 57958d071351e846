// A stored value with a kind and a checksum around it: 4 magic bytes naming what the
// value is, the payload, then the XXH3-64 of both (8 bytes, little-endian). A torn or
// bit-flipped value, or a value of another kind, never reads back as a payload.
#ifndef APESERVE_CACHE_FRAMED_RECORD_H_
#define APESERVE_CACHE_FRAMED_RECORD_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::cache {

// `magic` must be 4 bytes.
std::string FrameRecord(absl::string_view magic, absl::string_view payload);

// The payload inside `value` (a view into it). DATA_LOSS, saying what is wrong, when
// the value is too short, has another magic, or fails its checksum.
absl::StatusOr<absl::string_view> UnframeRecord(absl::string_view magic, absl::string_view value);

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_FRAMED_RECORD_H_
