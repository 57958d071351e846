#include "tests/model/gguf_builder.h"

#include <cstring>

namespace apeserve::testing {

void GgufBuilder::AppendU32(std::string& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(value >> (8 * i)));
}

void GgufBuilder::AppendU64(std::string& out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(value >> (8 * i)));
}

void GgufBuilder::AppendString(std::string& out, absl::string_view value) {
  AppendU64(out, value.size());
  out.append(value.data(), value.size());
}

GgufBuilder& GgufBuilder::Raw(absl::string_view key, uint32_t type, absl::string_view value_bytes) {
  AppendString(metadata_, key);
  AppendU32(metadata_, type);
  metadata_.append(value_bytes.data(), value_bytes.size());
  ++metadata_count_;
  return *this;
}

GgufBuilder& GgufBuilder::String(absl::string_view key, absl::string_view value) {
  std::string bytes;
  AppendString(bytes, value);
  return Raw(key, 8, bytes);
}

GgufBuilder& GgufBuilder::Uint32(absl::string_view key, uint32_t value) {
  std::string bytes;
  AppendU32(bytes, value);
  return Raw(key, 4, bytes);
}

GgufBuilder& GgufBuilder::Float32(absl::string_view key, float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  std::string bytes;
  AppendU32(bytes, bits);
  return Raw(key, 6, bytes);
}

GgufBuilder& GgufBuilder::Bool(absl::string_view key, uint8_t value) {
  return Raw(key, 7, std::string(1, static_cast<char>(value)));
}

GgufBuilder& GgufBuilder::StringArray(absl::string_view key,
                                      const std::vector<std::string>& values) {
  std::string bytes;
  AppendU32(bytes, 8);
  AppendU64(bytes, values.size());
  for (const std::string& value : values) AppendString(bytes, value);
  return Raw(key, 9, bytes);
}

GgufBuilder& GgufBuilder::Tensor(absl::string_view name, const std::vector<uint64_t>& dims,
                                 uint32_t ggml_type, absl::string_view data, int64_t offset) {
  tensors_.push_back({std::string(name), dims, ggml_type, std::string(data), offset});
  return *this;
}

GgufBuilder& GgufBuilder::OverrideCounts(uint64_t tensors, uint64_t metadata) {
  tensor_count_override_ = static_cast<int64_t>(tensors);
  metadata_count_override_ = static_cast<int64_t>(metadata);
  return *this;
}

std::string GgufBuilder::Build(uint32_t version, uint64_t alignment) const {
  std::string out = "GGUF";
  AppendU32(out, version);
  AppendU64(out, tensor_count_override_ >= 0 ? static_cast<uint64_t>(tensor_count_override_)
                                             : tensors_.size());
  AppendU64(out, metadata_count_override_ >= 0 ? static_cast<uint64_t>(metadata_count_override_)
                                               : metadata_count_);
  out.append(metadata_);

  std::string data;
  for (const TensorSpec& tensor : tensors_) {
    AppendString(out, tensor.name);
    AppendU32(out, static_cast<uint32_t>(tensor.dims.size()));
    for (uint64_t dim : tensor.dims) AppendU64(out, dim);
    AppendU32(out, tensor.type);
    while (data.size() % alignment != 0) data.push_back('\0');
    AppendU64(out, tensor.offset >= 0 ? static_cast<uint64_t>(tensor.offset) : data.size());
    data.append(tensor.data);
  }
  while (out.size() % alignment != 0) out.push_back('\0');
  return out + data;
}

}  // namespace apeserve::testing
