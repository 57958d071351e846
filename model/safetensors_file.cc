#include "model/safetensors_file.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/byte_reader.h"
#include "model/json_reading.h"

namespace apeserve::model {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100 << 20;  // the format's own limit
constexpr int64_t kMaxElements = int64_t{1} << 50;

}  // namespace

int DtypeBytes(absl::string_view dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  APE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapped, MappedFile::Open(path));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(std::move(mapped)));
  APE_RETURN_IF_ERROR(file->Parse());
  return file;
}

const SafetensorsTensor* SafetensorsFile::Find(absl::string_view name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::Status SafetensorsFile::Parse() {
  const absl::string_view bytes = file_->bytes();
  const std::string& source = path();
  ByteReader reader(bytes, source);
  APE_ASSIGN_OR_RETURN(const uint64_t header_size, reader.Read<uint64_t>("header length"));
  if (header_size > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("'", source, "' declares a header of ",
                                                   header_size, " bytes; at most ", kMaxHeaderBytes,
                                                   " are allowed"));
  }
  APE_ASSIGN_OR_RETURN(const absl::string_view header, reader.ReadBytes(header_size, "header"));
  const absl::string_view data = bytes.substr(reader.offset());
  APE_ASSIGN_OR_RETURN(const nlohmann::json json,
                       ParseJsonObject(header, absl::StrCat("the header of '", source, "'")));
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") continue;
    const std::string what = absl::StrCat("'", source, "': tensor '", name, "'");
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets") || !entry["dtype"].is_string() ||
        !entry["shape"].is_array() || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " lacks a dtype, a shape or two data_offsets"));
    }
    SafetensorsTensor tensor;
    tensor.dtype = entry["dtype"].get<std::string>();
    const int element_bytes = DtypeBytes(tensor.dtype);
    if (element_bytes == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has unknown dtype '", tensor.dtype, "'"));
    }
    int64_t elements = 1;
    for (const auto& extent : entry["shape"]) {
      if (!extent.is_number_unsigned() ||
          extent.get<uint64_t>() > static_cast<uint64_t>(kMaxElements) ||
          (extent.get<int64_t>() != 0 && elements > kMaxElements / extent.get<int64_t>())) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, " has an invalid shape ", entry["shape"].dump()));
      }
      tensor.shape.push_back(extent.get<int64_t>());
      elements *= extent.get<int64_t>();
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has non-numeric data_offsets"));
    }
    const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    if (begin > end || end > data.size()) {
      return absl::InvalidArgumentError(absl::StrCat(what, " spans bytes [", begin, ", ", end,
                                                     ") of a data section of ", data.size()));
    }
    if (end - begin != static_cast<uint64_t>(elements) * static_cast<uint64_t>(element_bytes)) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has ", end - begin, " bytes for ",
                                                     elements, " ", tensor.dtype, " values"));
    }
    tensor.bytes = data.substr(static_cast<size_t>(begin), static_cast<size_t>(end - begin));
    tensors_.emplace(name, std::move(tensor));
  }
  return absl::OkStatus();
}

}  // namespace apeserve::model
