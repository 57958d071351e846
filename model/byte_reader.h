// Bounds-checked little-endian reads from untrusted bytes (model files, stored records).
// Every read checks the bytes that remain first; none allocates.
#ifndef APESERVE_MODEL_BYTE_READER_H_
#define APESERVE_MODEL_BYTE_READER_H_

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

// Loads a little-endian integer or IEEE float from `p`, whatever the host's byte order.
template <typename T>
T LoadLittleEndian(const char* p) {
  static_assert(std::is_arithmetic_v<T>);
  using Bits =
      std::conditional_t<sizeof(T) == 8, uint64_t,
                         std::conditional_t<sizeof(T) == 4, uint32_t,
                                            std::conditional_t<sizeof(T) == 2, uint16_t, uint8_t>>>;
  Bits bits = 0;
  for (size_t i = 0; i < sizeof(T); ++i) {
    bits |= static_cast<Bits>(static_cast<Bits>(static_cast<unsigned char>(p[i])) << (8 * i));
  }
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

class ByteReader {
 public:
  // `source` names the bytes in errors (a file path, "tensor table", ...).
  ByteReader(absl::string_view bytes, absl::string_view source, size_t offset = 0)
      : bytes_(bytes), source_(source), offset_(offset) {}

  size_t offset() const { return offset_; }
  size_t remaining() const { return bytes_.size() - offset_; }

  // Reads a T; INVALID_ARGUMENT naming `what` when fewer than sizeof(T) bytes remain.
  template <typename T>
  absl::StatusOr<T> Read(absl::string_view what) {
    if (remaining() < sizeof(T)) return Truncated(what, sizeof(T));
    const T value = LoadLittleEndian<T>(bytes_.data() + offset_);
    offset_ += sizeof(T);
    return value;
  }

  // Returns the next `n` bytes as a view into the input.
  absl::StatusOr<absl::string_view> ReadBytes(uint64_t n, absl::string_view what) {
    if (remaining() < n) return Truncated(what, n);
    const absl::string_view view = bytes_.substr(offset_, static_cast<size_t>(n));
    offset_ += static_cast<size_t>(n);
    return view;
  }

  absl::Status Skip(uint64_t n, absl::string_view what) {
    if (remaining() < n) return Truncated(what, n);
    offset_ += static_cast<size_t>(n);
    return absl::OkStatus();
  }

 private:
  absl::Status Truncated(absl::string_view what, uint64_t needed) const {
    return absl::InvalidArgumentError(absl::StrCat("'", source_, "' is truncated: ", what,
                                                   " at byte ", offset_, " needs ", needed,
                                                   " bytes, ", remaining(), " remain"));
  }

  absl::string_view bytes_;
  absl::string_view source_;
  size_t offset_;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_BYTE_READER_H_
