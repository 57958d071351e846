#include "cache/framed_record.h"

#include <xxhash.h>

#include <bit>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace apeserve::cache {
namespace {

static_assert(std::endian::native == std::endian::little,
              "stored values are little-endian; a big-endian build needs byte swaps");

constexpr size_t kMagicBytes = 4;
constexpr size_t kChecksumBytes = sizeof(uint64_t);

}  // namespace

std::string FrameRecord(absl::string_view magic, absl::string_view payload) {
  std::string value;
  value.reserve(kMagicBytes + payload.size() + kChecksumBytes);
  value.append(magic.data(), kMagicBytes);
  value.append(payload.data(), payload.size());
  const uint64_t checksum = XXH3_64bits(value.data(), value.size());
  value.append(reinterpret_cast<const char*>(&checksum), kChecksumBytes);
  return value;
}

absl::StatusOr<absl::string_view> UnframeRecord(absl::string_view magic, absl::string_view value) {
  if (value.size() < kMagicBytes + kChecksumBytes) {
    return absl::DataLossError(
        absl::StrCat("stored value of ", value.size(), " bytes is shorter than its frame"));
  }
  if (value.substr(0, kMagicBytes) != magic.substr(0, kMagicBytes)) {
    return absl::DataLossError(
        absl::StrCat("stored value does not start with '", magic.substr(0, kMagicBytes), "'"));
  }
  const size_t body = value.size() - kChecksumBytes;
  uint64_t stored = 0;
  std::memcpy(&stored, value.data() + body, kChecksumBytes);
  if (XXH3_64bits(value.data(), body) != stored) {
    return absl::DataLossError("stored value fails its checksum");
  }
  return value.substr(kMagicBytes, body - kMagicBytes);
}

}  // namespace apeserve::cache
