// A safetensors file: an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the tensor bytes. Memory-mapped; every
// length, offset, shape and dtype is checked against the file before use.
// Thread-safety: immutable after Open().
#ifndef APESERVE_MODEL_SAFETENSORS_FILE_H_
#define APESERVE_MODEL_SAFETENSORS_FILE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/mapped_file.h"

namespace apeserve::model {

struct SafetensorsTensor {
  std::string dtype;           // "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;  // outermost first
  absl::string_view bytes;     // inside the mapped file
};

class SafetensorsFile {
 public:
  // NOT_FOUND / PERMISSION_DENIED: unreadable. INVALID_ARGUMENT: malformed (the
  // message names the tensor or field).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::map<std::string, SafetensorsTensor, std::less<>>& tensors() const { return tensors_; }
  const SafetensorsTensor* Find(absl::string_view name) const;

 private:
  explicit SafetensorsFile(std::unique_ptr<MappedFile> file) : file_(std::move(file)) {}
  absl::Status Parse();

  std::unique_ptr<MappedFile> file_;
  std::map<std::string, SafetensorsTensor, std::less<>> tensors_;
};

// Bytes per element of a safetensors dtype; 0 for one we do not know.
int DtypeBytes(absl::string_view dtype);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_SAFETENSORS_FILE_H_
