// A GGUF model file: its metadata, its tensor table, and views of its tensor bytes.
//
// The whole file is memory-mapped; Open() parses and checks every length, count,
// type, shape and offset against the bytes that exist before anything is allocated
// for it, so a malformed file yields INVALID_ARGUMENT, never a crash or an
// out-of-bounds read. Thread-safety: immutable after Open().
#ifndef APESERVE_MODEL_GGUF_FILE_H_
#define APESERVE_MODEL_GGUF_FILE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/ggml_type.h"
#include "model/gguf_header.h"
#include "model/mapped_file.h"

namespace apeserve::model {

// Value types of GGUF metadata, as written in the file.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// One metadata value. Integers of every width are widened to int64 (a uint64 beyond
// INT64_MAX is refused when read), floats to double.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  int64_t integer = 0;                                 // integer types and bool
  double real = 0;                                     // kFloat32, kFloat64
  std::string string;                                  // kString
  GgufValueType element_type = GgufValueType::kUint8;  // kArray
  std::vector<GgufValue> elements;                     // kArray
};

struct GgufTensor {
  std::string name;
  std::vector<int64_t> shape;  // outermost first, as torch orders it: [rows, columns]
  const GgmlTypeInfo* type = nullptr;
  int64_t element_count = 0;
  absl::string_view bytes;  // the tensor's data, inside the mapped file
};

class GgufFile {
 public:
  // Maps and parses the file. NOT_FOUND / PERMISSION_DENIED: the file cannot be read.
  // INVALID_ARGUMENT: anything malformed, with the field and the byte offset.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const GgufHeader& header() const { return header_; }
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  // Bytes of the whole file (for fingerprints).
  absl::string_view bytes() const { return file_->bytes(); }

  // nullptr when absent.
  const GgufValue* Find(absl::string_view key) const;
  const GgufTensor* FindTensor(absl::string_view name) const;

  // Typed metadata. NOT_FOUND: no such key. INVALID_ARGUMENT: another type.
  absl::StatusOr<int64_t> GetInt(absl::string_view key) const;
  absl::StatusOr<double> GetFloat(absl::string_view key) const;  // integers convert
  absl::StatusOr<bool> GetBool(absl::string_view key) const;
  absl::StatusOr<std::string> GetString(absl::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(absl::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(absl::string_view key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(absl::string_view key) const;

 private:
  explicit GgufFile(std::unique_ptr<MappedFile> file) : file_(std::move(file)) {}
  absl::Status Parse();
  absl::StatusOr<const GgufValue*> Require(absl::string_view key) const;
  absl::StatusOr<const GgufValue*> RequireArray(absl::string_view key,
                                                bool (*element_ok)(GgufValueType),
                                                absl::string_view expected) const;

  std::unique_ptr<MappedFile> file_;
  GgufHeader header_;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// The name of a value type, e.g. "uint32", for messages.
absl::string_view GgufValueTypeName(GgufValueType type);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_GGUF_FILE_H_
