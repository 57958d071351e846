// gguf_dump: writes every tensor of a GGUF file, dequantized to fp32 by our reader, to
// one binary file, and prints a JSON index (metadata and, per tensor, name, type,
// shape and offset in floats) on stdout. The Python oracle test compares both with
// what the gguf package reads from the same file.
//
// Usage: gguf_dump MODEL.gguf OUT.f32
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/gguf_file.h"

namespace {

nlohmann::json ToJson(const apeserve::model::GgufValue& value) {
  using apeserve::model::GgufValueType;
  switch (value.type) {
    case GgufValueType::kFloat32:
    case GgufValueType::kFloat64:
      return value.real;
    case GgufValueType::kBool:
      return value.integer != 0;
    case GgufValueType::kString:
      return value.string;
    case GgufValueType::kArray: {
      nlohmann::json array = nlohmann::json::array();
      for (const auto& element : value.elements) array.push_back(ToJson(element));
      return array;
    }
    default:
      return value.integer;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: gguf_dump MODEL.gguf OUT.f32\n");
    return 2;
  }
  auto file = apeserve::model::GgufFile::Open(argv[1]);
  if (!file.ok()) {
    std::fprintf(stderr, "gguf_dump: %s\n", file.status().ToString().c_str());
    return 1;
  }
  nlohmann::json index;
  for (const auto& [key, value] : (*file)->metadata()) index["metadata"][key] = ToJson(value);
  std::ofstream out(argv[2], std::ios::binary | std::ios::trunc);
  int64_t offset = 0;
  std::vector<float> values;
  for (const auto& tensor : (*file)->tensors()) {
    values.resize(static_cast<size_t>(tensor.element_count));
    const absl::Status status = apeserve::model::Dequantize(tensor.type->type, tensor.bytes,
                                                            tensor.element_count, values.data());
    if (!status.ok()) {
      std::fprintf(stderr, "gguf_dump: %s: %s\n", tensor.name.c_str(), status.ToString().c_str());
      return 1;
    }
    out.write(reinterpret_cast<const char*>(values.data()),
              static_cast<std::streamsize>(values.size() * sizeof(float)));
    index["tensors"].push_back({{"name", tensor.name},
                                {"type", tensor.type->name},
                                {"shape", tensor.shape},
                                {"offset", offset}});
    offset += tensor.element_count;
  }
  if (!out.flush()) {
    std::fprintf(stderr, "gguf_dump: cannot write %s\n", argv[2]);
    return 1;
  }
  std::puts(index.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return 0;
}
