// The fixed header at the start of a GGUF model file, read defensively.
//
// Enough to tell, before anything heavy, that a file is a GGUF model of a version we
// read and that its declared counts can fit in its size. The full reader (metadata,
// tensor table) builds on this. Thread-safe: no shared state.
#ifndef APESERVE_MODEL_GGUF_HEADER_H_
#define APESERVE_MODEL_GGUF_HEADER_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

// "GGUF" as the first four bytes of the file.
inline constexpr char kGgufMagic[4] = {'G', 'G', 'U', 'F'};
// magic, version, tensor count, metadata count.
inline constexpr uint64_t kGgufHeaderBytes = 4 + 4 + 8 + 8;

struct GgufHeader {
  uint32_t version = 0;         // 2 or 3
  uint64_t tensor_count = 0;    // tensors the file declares
  uint64_t metadata_count = 0;  // metadata key-value pairs the file declares
  uint64_t file_size = 0;       // bytes
};

// Checks the header in the first bytes of a GGUF file of `file_size` bytes; `path`
// names the file in error messages. Errors as for ReadGgufHeader.
absl::StatusOr<GgufHeader> ParseGgufHeader(absl::string_view first_bytes, uint64_t file_size,
                                           absl::string_view path);

// Reads and checks the header of the GGUF file at `path`.
// NOT_FOUND: no such file. PERMISSION_DENIED: it cannot be read.
// INVALID_ARGUMENT: not a GGUF file (magic), an unsupported version (only 2 and 3 are
// read), truncated, or declared counts that cannot fit in the file.
absl::StatusOr<GgufHeader> ReadGgufHeader(const std::string& path);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_GGUF_HEADER_H_
