#include "cache/kv_quantization.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace apeserve::cache {
namespace {

using model::KvDtype;
using model::KvSegment;

float LoadElement(const char* bytes, size_t index, KvDtype dtype) {
  if (dtype == KvDtype::kFloat32) {
    float value = 0;
    std::memcpy(&value, bytes + index * sizeof(float), sizeof(float));
    return value;
  }
  uint16_t half = 0;  // bfloat16: the high half of a float32
  std::memcpy(&half, bytes + index * sizeof(uint16_t), sizeof(uint16_t));
  const uint32_t bits = static_cast<uint32_t>(half) << 16;
  float value = 0;
  std::memcpy(&value, &bits, sizeof(float));
  return value;
}

void StoreElement(float value, char* bytes, size_t index, KvDtype dtype) {
  if (dtype == KvDtype::kFloat32) {
    std::memcpy(bytes + index * sizeof(float), &value, sizeof(float));
    return;
  }
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(float));
  bits += 0x7FFFU + ((bits >> 16) & 1U);  // round to nearest even (values are finite)
  const auto half = static_cast<uint16_t>(bits >> 16);
  std::memcpy(bytes + index * sizeof(uint16_t), &half, sizeof(uint16_t));
}

// The group of element (head, token, channel) and the number of groups per tensor.
struct Grouping {
  KvQuantization quantization;
  int64_t length;
  int64_t head_dim;

  int64_t Group(int64_t head, int64_t token, int64_t channel) const {
    return quantization == KvQuantization::kInt8PerChannel ? head * head_dim + channel
                                                           : head * length + token;
  }
};

int64_t GroupsPerTensor(const KvSegment& shape, KvQuantization quantization) {
  return shape.kv_heads *
         (quantization == KvQuantization::kInt8PerChannel ? shape.head_dim : shape.length);
}

int64_t ElementsPerTensor(const KvSegment& shape) {
  return static_cast<int64_t>(shape.kv_heads) * shape.length * shape.head_dim;
}

absl::Status CheckSize(absl::string_view what, size_t actual, size_t expected) {
  if (actual == expected) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " has ", actual, " bytes; its shape needs ", expected));
}

}  // namespace

absl::string_view KvQuantizationName(KvQuantization quantization) {
  switch (quantization) {
    case KvQuantization::kNone:
      return "none";
    case KvQuantization::kInt8PerChannel:
      return "int8_per_channel";
    case KvQuantization::kInt8PerToken:
      return "int8_per_token";
  }
  return "unknown";
}

absl::StatusOr<KvQuantization> ParseKvQuantization(absl::string_view name) {
  for (const KvQuantization quantization :
       {KvQuantization::kNone, KvQuantization::kInt8PerChannel, KvQuantization::kInt8PerToken}) {
    if (name == KvQuantizationName(quantization)) return quantization;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "KV quantization '", name, "' is not one of none, int8_per_channel, int8_per_token"));
}

bool CanQuantize(KvDtype dtype, KvQuantization quantization) {
  return quantization == KvQuantization::kNone || dtype == KvDtype::kFloat32 ||
         dtype == KvDtype::kBFloat16;
}

size_t QuantizedLayerBytes(const KvSegment& shape, KvQuantization quantization) {
  if (quantization == KvQuantization::kNone) return shape.LayerBytes();
  return 2 * (static_cast<size_t>(ElementsPerTensor(shape)) +
              static_cast<size_t>(GroupsPerTensor(shape, quantization)) * sizeof(float));
}

absl::StatusOr<std::string> QuantizeLayer(absl::string_view layer, const KvSegment& shape,
                                          KvQuantization quantization) {
  if (quantization == KvQuantization::kNone || !CanQuantize(shape.dtype, quantization)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot store ", KvDtypeName(shape.dtype),
                                                   " KV as ", KvQuantizationName(quantization)));
  }
  if (absl::Status size = CheckSize("KV layer", layer.size(), shape.LayerBytes()); !size.ok()) {
    return size;
  }
  const int64_t elements = ElementsPerTensor(shape);
  const int64_t groups = GroupsPerTensor(shape, quantization);
  const Grouping grouping{quantization, shape.length, shape.head_dim};
  std::string out(QuantizedLayerBytes(shape, quantization), '\0');
  for (int tensor = 0; tensor < 2; ++tensor) {  // K, then V
    const int64_t base = tensor * elements;
    std::vector<float> max_abs(static_cast<size_t>(groups), 0.0F);
    for (int64_t h = 0, i = 0; h < shape.kv_heads; ++h) {
      for (int64_t t = 0; t < shape.length; ++t) {
        for (int64_t c = 0; c < shape.head_dim; ++c, ++i) {
          const float x = LoadElement(layer.data(), static_cast<size_t>(base + i), shape.dtype);
          if (!std::isfinite(x)) {
            return absl::InvalidArgumentError("KV layer holds a value that is not finite");
          }
          float& m = max_abs[static_cast<size_t>(grouping.Group(h, t, c))];
          m = std::max(m, std::fabs(x));
        }
      }
    }
    std::vector<float> scales(max_abs.size());
    std::transform(max_abs.begin(), max_abs.end(), scales.begin(),
                   [](float m) { return m / 127.0F; });
    auto* values = reinterpret_cast<int8_t*>(out.data()) + base;
    for (int64_t h = 0, i = 0; h < shape.kv_heads; ++h) {
      for (int64_t t = 0; t < shape.length; ++t) {
        for (int64_t c = 0; c < shape.head_dim; ++c, ++i) {
          const float scale = scales[static_cast<size_t>(grouping.Group(h, t, c))];
          const float x = LoadElement(layer.data(), static_cast<size_t>(base + i), shape.dtype);
          const float q = scale == 0.0F ? 0.0F : std::nearbyint(x / scale);
          values[i] = static_cast<int8_t>(std::clamp(q, -127.0F, 127.0F));
        }
      }
    }
    std::memcpy(out.data() + 2 * elements + tensor * groups * static_cast<int64_t>(sizeof(float)),
                scales.data(), scales.size() * sizeof(float));
  }
  return out;
}

absl::StatusOr<std::string> DequantizeLayer(absl::string_view quantized, const KvSegment& shape,
                                            KvQuantization quantization) {
  if (quantization == KvQuantization::kNone || !CanQuantize(shape.dtype, quantization)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", KvDtypeName(shape.dtype),
                                                   " KV stored as ",
                                                   KvQuantizationName(quantization)));
  }
  if (absl::Status size = CheckSize("quantized KV layer", quantized.size(),
                                    QuantizedLayerBytes(shape, quantization));
      !size.ok()) {
    return size;
  }
  const int64_t elements = ElementsPerTensor(shape);
  const int64_t groups = GroupsPerTensor(shape, quantization);
  const Grouping grouping{quantization, shape.length, shape.head_dim};
  std::string out(shape.LayerBytes(), '\0');
  const auto* values = reinterpret_cast<const int8_t*>(quantized.data());
  for (int tensor = 0; tensor < 2; ++tensor) {
    const int64_t base = tensor * elements;
    std::vector<float> scales(static_cast<size_t>(groups));
    std::memcpy(
        scales.data(),
        quantized.data() + 2 * elements + tensor * groups * static_cast<int64_t>(sizeof(float)),
        scales.size() * sizeof(float));
    for (int64_t h = 0, i = 0; h < shape.kv_heads; ++h) {
      for (int64_t t = 0; t < shape.length; ++t) {
        for (int64_t c = 0; c < shape.head_dim; ++c, ++i) {
          const float scale = scales[static_cast<size_t>(grouping.Group(h, t, c))];
          StoreElement(static_cast<float>(values[base + i]) * scale, out.data(),
                       static_cast<size_t>(base + i), shape.dtype);
        }
      }
    }
  }
  return out;
}

}  // namespace apeserve::cache
