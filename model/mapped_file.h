// A read-only memory map of a whole file, unmapped on destruction.
// Thread-safety: immutable after Open(); bytes() may be read from any thread.
#ifndef APESERVE_MODEL_MAPPED_FILE_H_
#define APESERVE_MODEL_MAPPED_FILE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

class MappedFile {
 public:
  // NOT_FOUND: no such file. PERMISSION_DENIED: not readable.
  // INVALID_ARGUMENT: not a regular file. UNAVAILABLE: mmap failed.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::string& path() const { return path_; }
  absl::string_view bytes() const { return {data_, size_}; }

 private:
  MappedFile(std::string path, const char* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  const char* data_;
  size_t size_;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_MAPPED_FILE_H_
