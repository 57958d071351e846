#include "model/gguf_header.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "model/byte_reader.h"
#include "model/posix_error.h"

namespace apeserve::model {
namespace {

// The smallest encodings the rest of the file can use, to bound the declared counts:
// a tensor record is a name (u64 length), a dimension count (u32), at least one
// dimension (u64), a type (u32) and an offset (u64); a metadata pair is a key (u64
// length), a value type (u32) and at least one byte of value.
constexpr uint64_t kMinTensorRecordBytes = 8 + 4 + 8 + 4 + 8;
constexpr uint64_t kMinMetadataRecordBytes = 8 + 4 + 1;

}  // namespace

absl::StatusOr<GgufHeader> ParseGgufHeader(absl::string_view first_bytes, uint64_t file_size,
                                           absl::string_view path) {
  if (file_size < kGgufHeaderBytes || first_bytes.size() < kGgufHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("model file '", path, "' is truncated: ", file_size,
                     " bytes, a GGUF header needs ", kGgufHeaderBytes));
  }
  const char* bytes = first_bytes.data();
  if (std::memcmp(bytes, kGgufMagic, sizeof(kGgufMagic)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model file '", path, "' is not a GGUF file: it starts with bytes 0x",
                     absl::BytesToHexString(first_bytes.substr(0, 4)), ", expected \"GGUF\""));
  }
  GgufHeader header;
  header.file_size = file_size;
  header.version = LoadLittleEndian<uint32_t>(bytes + 4);
  header.tensor_count = LoadLittleEndian<uint64_t>(bytes + 8);
  header.metadata_count = LoadLittleEndian<uint64_t>(bytes + 16);
  if (header.version != 2 && header.version != 3) {
    return absl::InvalidArgumentError(absl::StrCat("model file '", path, "' is GGUF version ",
                                                   header.version, "; versions 2 and 3 are read"));
  }

  // Divide rather than multiply: the counts come from the file and may be absurd.
  const uint64_t body = file_size - kGgufHeaderBytes;
  if (header.tensor_count > body / kMinTensorRecordBytes ||
      header.metadata_count >
          (body - header.tensor_count * kMinTensorRecordBytes) / kMinMetadataRecordBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model file '", path, "' declares ", header.tensor_count, " tensors and ",
        header.metadata_count, " metadata pairs, which cannot fit in its ", file_size, " bytes"));
  }
  return header;
}

absl::StatusOr<GgufHeader> ReadGgufHeader(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return PosixError(errno, absl::StrCat("cannot open model file '", path, "'"));
  absl::Cleanup close_fd = [fd] { ::close(fd); };

  struct stat st {};
  if (::fstat(fd, &st) != 0) return PosixError(errno, absl::StrCat("cannot stat '", path, "'"));
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model file '", path, "' is not a regular file"));
  }
  std::array<char, kGgufHeaderBytes> bytes{};
  const ssize_t got = ::pread(fd, bytes.data(), bytes.size(), 0);
  if (got < 0) return PosixError(errno, absl::StrCat("cannot read '", path, "'"));
  return ParseGgufHeader(absl::string_view(bytes.data(), static_cast<size_t>(got)),
                         static_cast<uint64_t>(st.st_size), path);
}

}  // namespace apeserve::model
