#include "model/gguf_file.h"

#include <algorithm>
#include <optional>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/byte_reader.h"

namespace apeserve::model {
namespace {

constexpr uint32_t kMaxDimensions = 4;              // GGML_MAX_DIMS
constexpr uint64_t kMaxNameBytes = 1024;            // keys and tensor names
constexpr int kMaxArrayDepth = 4;                   // arrays of arrays of ...
constexpr int64_t kMaxElements = int64_t{1} << 50;  // per tensor; far beyond any model
constexpr uint64_t kDefaultAlignment = 32;          // when general.alignment is absent
constexpr uint64_t kMaxAlignment = 1 << 16;

bool KnownValueType(uint32_t type) {
  return type <= static_cast<uint32_t>(GgufValueType::kFloat64);
}

// The fewest bytes one value of `type` can take, to bound array counts before reserving.
uint64_t MinValueBytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
    case GgufValueType::kString:
      return 8;
    case GgufValueType::kArray:
      return 12;
  }
  return 1;
}

absl::StatusOr<std::string> ReadString(ByteReader& reader, absl::string_view what,
                                       uint64_t max_bytes = UINT64_MAX) {
  APE_ASSIGN_OR_RETURN(const uint64_t length, reader.Read<uint64_t>(what));
  if (length > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " at byte ", reader.offset() - 8, " is ",
                                                   length, " bytes long; at most ", max_bytes,
                                                   " are allowed"));
  }
  APE_ASSIGN_OR_RETURN(const absl::string_view bytes, reader.ReadBytes(length, what));
  return std::string(bytes);
}

template <typename T>
absl::Status ReadInteger(ByteReader& reader, absl::string_view what, GgufValue& out) {
  APE_ASSIGN_OR_RETURN(const T value, reader.Read<T>(what));
  if constexpr (std::is_same_v<T, uint64_t>) {
    if (value > static_cast<uint64_t>(INT64_MAX)) {
      return absl::InvalidArgumentError(absl::StrCat(what, " is ", value, ", beyond int64"));
    }
  }
  // Signed widths widen with their sign, as the format defines them.
  out.integer = static_cast<int64_t>(value);  // NOLINT(bugprone-signed-char-misuse)
  return absl::OkStatus();
}

absl::Status ReadValue(ByteReader& reader, GgufValueType type, int depth, absl::string_view what,
                       GgufValue& out) {
  out.type = type;
  switch (type) {
    case GgufValueType::kUint8:
      return ReadInteger<uint8_t>(reader, what, out);
    case GgufValueType::kInt8:
      return ReadInteger<int8_t>(reader, what, out);
    case GgufValueType::kUint16:
      return ReadInteger<uint16_t>(reader, what, out);
    case GgufValueType::kInt16:
      return ReadInteger<int16_t>(reader, what, out);
    case GgufValueType::kUint32:
      return ReadInteger<uint32_t>(reader, what, out);
    case GgufValueType::kInt32:
      return ReadInteger<int32_t>(reader, what, out);
    case GgufValueType::kUint64:
      return ReadInteger<uint64_t>(reader, what, out);
    case GgufValueType::kInt64:
      return ReadInteger<int64_t>(reader, what, out);
    case GgufValueType::kBool: {
      APE_ASSIGN_OR_RETURN(const uint8_t value, reader.Read<uint8_t>(what));
      if (value > 1) {
        return absl::InvalidArgumentError(absl::StrCat(what, " is a bool of value ", value));
      }
      out.integer = value;
      return absl::OkStatus();
    }
    case GgufValueType::kFloat32: {
      APE_ASSIGN_OR_RETURN(const float value, reader.Read<float>(what));
      out.real = value;
      return absl::OkStatus();
    }
    case GgufValueType::kFloat64: {
      APE_ASSIGN_OR_RETURN(out.real, reader.Read<double>(what));
      return absl::OkStatus();
    }
    case GgufValueType::kString: {
      APE_ASSIGN_OR_RETURN(out.string, ReadString(reader, what));
      return absl::OkStatus();
    }
    case GgufValueType::kArray: {
      if (depth >= kMaxArrayDepth) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, " nests arrays deeper than ", kMaxArrayDepth));
      }
      APE_ASSIGN_OR_RETURN(const uint32_t element_type, reader.Read<uint32_t>(what));
      if (!KnownValueType(element_type)) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, " has an unknown element type ", element_type));
      }
      out.element_type = static_cast<GgufValueType>(element_type);
      APE_ASSIGN_OR_RETURN(const uint64_t count, reader.Read<uint64_t>(what));
      if (count > reader.remaining() / MinValueBytes(out.element_type)) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, " declares ", count, " elements, more than the file holds"));
      }
      out.elements.resize(static_cast<size_t>(count));
      for (GgufValue& element : out.elements) {
        APE_RETURN_IF_ERROR(ReadValue(reader, out.element_type, depth + 1, what, element));
      }
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(what, " has an unknown type"));
}

bool IsInteger(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
      return true;
    case GgufValueType::kFloat32:
    case GgufValueType::kFloat64:
    case GgufValueType::kBool:
    case GgufValueType::kString:
    case GgufValueType::kArray:
      break;
  }
  return false;
}

bool IsFloat(GgufValueType type) {
  return type == GgufValueType::kFloat32 || type == GgufValueType::kFloat64;
}

absl::Status TypeError(absl::string_view key, GgufValueType found, absl::string_view expected) {
  return absl::InvalidArgumentError(absl::StrCat(
      "metadata '", key, "' holds ", GgufValueTypeName(found), ", expected ", expected));
}

// a * b, or nullopt when it would pass `limit`.
std::optional<int64_t> CheckedProduct(int64_t a, int64_t b, int64_t limit) {
  if (a != 0 && b > limit / a) return std::nullopt;
  return a * b;
}

}  // namespace

absl::string_view GgufValueTypeName(GgufValueType type) {
  static constexpr absl::string_view kNames[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                                 "int32",  "float32", "bool",   "string", "array",
                                                 "uint64", "int64",   "float64"};
  static_assert(std::size(kNames) == static_cast<size_t>(GgufValueType::kFloat64) + 1);
  const auto index = static_cast<size_t>(type);
  return index < std::size(kNames) ? kNames[index] : "unknown";
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  APE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapped, MappedFile::Open(path));
  std::unique_ptr<GgufFile> file(new GgufFile(std::move(mapped)));
  APE_RETURN_IF_ERROR(file->Parse());
  return file;
}

absl::Status GgufFile::Parse() {
  const absl::string_view bytes = file_->bytes();
  const std::string& source = file_->path();
  APE_ASSIGN_OR_RETURN(header_, ParseGgufHeader(bytes, bytes.size(), source));
  ByteReader reader(bytes, source, kGgufHeaderBytes);

  for (uint64_t i = 0; i < header_.metadata_count; ++i) {
    APE_ASSIGN_OR_RETURN(std::string key,
                         ReadString(reader, absl::StrCat("metadata key #", i), kMaxNameBytes));
    const std::string what = absl::StrCat("metadata '", key, "'");
    APE_ASSIGN_OR_RETURN(const uint32_t type, reader.Read<uint32_t>(what));
    if (!KnownValueType(type)) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has an unknown value type ", type));
    }
    GgufValue value;
    APE_RETURN_IF_ERROR(ReadValue(reader, static_cast<GgufValueType>(type), 0, what, value));
    if (!metadata_.emplace(std::move(key), std::move(value)).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, " appears twice"));
    }
  }

  std::vector<uint64_t> offsets;  // of each tensor, checked once the data start is known
  offsets.reserve(static_cast<size_t>(header_.tensor_count));
  tensors_.reserve(static_cast<size_t>(header_.tensor_count));
  for (uint64_t i = 0; i < header_.tensor_count; ++i) {
    GgufTensor tensor;
    APE_ASSIGN_OR_RETURN(tensor.name,
                         ReadString(reader, absl::StrCat("tensor name #", i), kMaxNameBytes));
    const std::string what = absl::StrCat("tensor '", tensor.name, "'");
    APE_ASSIGN_OR_RETURN(const uint32_t dimensions, reader.Read<uint32_t>(what));
    if (dimensions == 0 || dimensions > kMaxDimensions) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " has ", dimensions, " dimensions; 1 to ", kMaxDimensions, " are allowed"));
    }
    tensor.shape.resize(dimensions);
    int64_t elements = 1;
    for (uint32_t d = 0; d < dimensions; ++d) {
      APE_ASSIGN_OR_RETURN(const uint64_t extent, reader.Read<uint64_t>(what));
      const std::optional<int64_t> product =
          extent == 0 || extent > static_cast<uint64_t>(kMaxElements)
              ? std::nullopt
              : CheckedProduct(elements, static_cast<int64_t>(extent), kMaxElements);
      if (!product.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, " has an absurd extent ", extent, " in dimension ", d));
      }
      elements = *product;
      // GGUF lists the innermost (contiguous) dimension first; torch lists it last.
      tensor.shape[dimensions - 1 - d] = static_cast<int64_t>(extent);
    }
    tensor.element_count = elements;
    APE_ASSIGN_OR_RETURN(const uint32_t type, reader.Read<uint32_t>(what));
    tensor.type = FindGgmlType(type);
    if (tensor.type == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has GGML type ", type, ", which apeserve does not read"));
    }
    if (tensor.shape.back() % tensor.type->block_elements != 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has rows of ", tensor.shape.back(),
                                                     " values, not whole ", tensor.type->name,
                                                     " blocks of ", tensor.type->block_elements));
    }
    APE_ASSIGN_OR_RETURN(const uint64_t offset, reader.Read<uint64_t>(what));
    offsets.push_back(offset);
    if (!tensor_index_.emplace(tensor.name, tensors_.size()).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, " appears twice"));
    }
    tensors_.push_back(std::move(tensor));
  }

  uint64_t alignment = kDefaultAlignment;
  if (Find("general.alignment") != nullptr) {
    APE_ASSIGN_OR_RETURN(const int64_t value, GetInt("general.alignment"));
    if (value <= 0 || static_cast<uint64_t>(value) > kMaxAlignment || (value & (value - 1)) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("general.alignment is ", value,
                                                     "; a power of two up to ", kMaxAlignment,
                                                     " is expected"));
    }
    alignment = static_cast<uint64_t>(value);
  }
  const uint64_t data_start = (reader.offset() + alignment - 1) / alignment * alignment;
  if (data_start > bytes.size() && !tensors_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", source, "' is truncated: its tensor data would start at byte ",
                     data_start, " of ", bytes.size()));
  }
  const uint64_t data_size = bytes.size() - std::min<uint64_t>(data_start, bytes.size());
  for (size_t i = 0; i < tensors_.size(); ++i) {
    GgufTensor& tensor = tensors_[i];
    const uint64_t offset = offsets[i];
    const uint64_t size = static_cast<uint64_t>(tensor.element_count) /
                          tensor.type->block_elements * tensor.type->block_bytes;
    if (offset % alignment != 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' at offset ",
                                                     offset, " is not aligned to ", alignment));
    }
    if (offset > data_size || size > data_size - offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", tensor.name, "' (", size, " bytes at offset ", offset,
                       ") reaches past the end of the file's ", data_size, " data bytes"));
    }
    tensor.bytes =
        bytes.substr(static_cast<size_t>(data_start + offset), static_cast<size_t>(size));
  }
  return absl::OkStatus();
}

const GgufValue* GgufFile::Find(absl::string_view key) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::FindTensor(absl::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<const GgufValue*> GgufFile::Require(absl::string_view key) const {
  const GgufValue* value = Find(key);
  if (value == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("model file '", path(), "' has no metadata '", key, "'"));
  }
  return value;
}

absl::StatusOr<int64_t> GgufFile::GetInt(absl::string_view key) const {
  APE_ASSIGN_OR_RETURN(const GgufValue* value, Require(key));
  if (!IsInteger(value->type)) return TypeError(key, value->type, "an integer");
  return value->integer;
}

absl::StatusOr<double> GgufFile::GetFloat(absl::string_view key) const {
  APE_ASSIGN_OR_RETURN(const GgufValue* value, Require(key));
  if (IsFloat(value->type)) return value->real;
  if (IsInteger(value->type)) return static_cast<double>(value->integer);
  return TypeError(key, value->type, "a number");
}

absl::StatusOr<bool> GgufFile::GetBool(absl::string_view key) const {
  APE_ASSIGN_OR_RETURN(const GgufValue* value, Require(key));
  if (value->type != GgufValueType::kBool) return TypeError(key, value->type, "a bool");
  return value->integer != 0;
}

absl::StatusOr<std::string> GgufFile::GetString(absl::string_view key) const {
  APE_ASSIGN_OR_RETURN(const GgufValue* value, Require(key));
  if (value->type != GgufValueType::kString) return TypeError(key, value->type, "a string");
  return value->string;
}

absl::StatusOr<const GgufValue*> GgufFile::RequireArray(absl::string_view key,
                                                        bool (*element_ok)(GgufValueType),
                                                        absl::string_view expected) const {
  APE_ASSIGN_OR_RETURN(const GgufValue* value, Require(key));
  if (value->type != GgufValueType::kArray || !element_ok(value->element_type)) {
    return TypeError(key, value->type == GgufValueType::kArray ? value->element_type : value->type,
                     expected);
  }
  return value;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(absl::string_view key) const {
  APE_ASSIGN_OR_RETURN(
      const GgufValue* value,
      RequireArray(
          key, [](GgufValueType t) { return t == GgufValueType::kString; }, "an array of strings"));
  std::vector<std::string> out;
  out.reserve(value->elements.size());
  for (const GgufValue& element : value->elements) out.push_back(element.string);
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(absl::string_view key) const {
  APE_ASSIGN_OR_RETURN(const GgufValue* value,
                       RequireArray(key, IsInteger, "an array of integers"));
  std::vector<int64_t> out;
  out.reserve(value->elements.size());
  for (const GgufValue& element : value->elements) out.push_back(element.integer);
  return out;
}

absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(absl::string_view key) const {
  APE_ASSIGN_OR_RETURN(const GgufValue* value, RequireArray(key, IsFloat, "an array of floats"));
  std::vector<double> out;
  out.reserve(value->elements.size());
  for (const GgufValue& element : value->elements) out.push_back(element.real);
  return out;
}

}  // namespace apeserve::model
