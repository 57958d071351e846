#include "model/ggml_type.h"

#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "model/byte_reader.h"

namespace apeserve::model {
namespace {

constexpr uint32_t kSuperBlock = 256;  // QK_K: values per K-quant super-block

constexpr GgmlTypeInfo kTypes[] = {
    {GgmlType::kF32, "F32", 1, 4},
    {GgmlType::kF16, "F16", 1, 2},
    {GgmlType::kQ4_0, "Q4_0", 32, 2 + 16},
    {GgmlType::kQ4_1, "Q4_1", 32, 2 + 2 + 16},
    {GgmlType::kQ5_0, "Q5_0", 32, 2 + 4 + 16},
    {GgmlType::kQ5_1, "Q5_1", 32, 2 + 2 + 4 + 16},
    {GgmlType::kQ8_0, "Q8_0", 32, 2 + 32},
    {GgmlType::kQ2_K, "Q2_K", kSuperBlock, 16 + 64 + 2 + 2},
    {GgmlType::kQ3_K, "Q3_K", kSuperBlock, 32 + 64 + 12 + 2},
    {GgmlType::kQ4_K, "Q4_K", kSuperBlock, 2 + 2 + 12 + 128},
    {GgmlType::kQ5_K, "Q5_K", kSuperBlock, 2 + 2 + 12 + 32 + 128},
    {GgmlType::kQ6_K, "Q6_K", kSuperBlock, 128 + 64 + 16 + 2},
    {GgmlType::kBF16, "BF16", 1, 2},
};
// The block sizes ggml's own tables give (ggml-common.h), as a guard against typos.
static_assert(kTypes[2].block_bytes == 18 && kTypes[3].block_bytes == 20);
static_assert(kTypes[4].block_bytes == 22 && kTypes[5].block_bytes == 24);
static_assert(kTypes[6].block_bytes == 34 && kTypes[7].block_bytes == 84);
static_assert(kTypes[8].block_bytes == 110 && kTypes[9].block_bytes == 144);
static_assert(kTypes[10].block_bytes == 176 && kTypes[11].block_bytes == 210);

using Block = const unsigned char*;

float Half(Block p) {
  return HalfToFloat(LoadLittleEndian<uint16_t>(reinterpret_cast<const char*>(p)));
}

void DequantizeQ4_0(Block b, float* y) {
  const float d = Half(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((b[2 + j] & 0x0F) - 8) * d;
    y[j + 16] = static_cast<float>((b[2 + j] >> 4) - 8) * d;
  }
}

void DequantizeQ4_1(Block b, float* y) {
  const float d = Half(b), m = Half(b + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(b[4 + j] & 0x0F) * d + m;
    y[j + 16] = static_cast<float>(b[4 + j] >> 4) * d + m;
  }
}

// Q5_0 and Q5_1 keep each value's fifth bit in a 32-bit mask after the scale(s).
void DequantizeQ5_0(Block b, float* y) {
  const float d = Half(b);
  const uint32_t qh = LoadLittleEndian<uint32_t>(reinterpret_cast<const char*>(b + 2));
  Block qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const uint32_t high0 = ((qh >> j) << 4) & 0x10;
    const uint32_t high1 = (qh >> (j + 12)) & 0x10;
    y[j] = static_cast<float>(static_cast<int>((qs[j] & 0x0F) | high0) - 16) * d;
    y[j + 16] = static_cast<float>(static_cast<int>((qs[j] >> 4) | high1) - 16) * d;
  }
}

void DequantizeQ5_1(Block b, float* y) {
  const float d = Half(b), m = Half(b + 2);
  const uint32_t qh = LoadLittleEndian<uint32_t>(reinterpret_cast<const char*>(b + 4));
  Block qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const uint32_t high0 = ((qh >> j) << 4) & 0x10;
    const uint32_t high1 = (qh >> (j + 12)) & 0x10;
    y[j] = static_cast<float>((qs[j] & 0x0F) | high0) * d + m;
    y[j + 16] = static_cast<float>((qs[j] >> 4) | high1) * d + m;
  }
}

void DequantizeQ8_0(Block b, float* y) {
  const float d = Half(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

void DequantizeQ2_K(Block b, float* y) {
  Block scales = b, q = b + 16;
  const float d = Half(b + 80), min = Half(b + 82);
  int is = 0;
  for (int n = 0; n < 256; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const unsigned sc = scales[is++];
        const float dl = d * static_cast<float>(sc & 0x0F);
        const float ml = min * static_cast<float>(sc >> 4);
        for (int l = 0; l < 16; ++l) {
          *y++ = dl * static_cast<float>((q[l + 16 * half] >> shift) & 3) - ml;
        }
      }
    }
    q += 32;
  }
}

void DequantizeQ3_K(Block b, float* y) {
  Block hmask = b, q = b + 32, packed = b + 96;
  const float d_all = Half(b + 108);
  // Sixteen 6-bit scales packed in 12 bytes: low 4 bits in bytes 0-7, high 2 in 8-11.
  std::array<int, 16> scales{};
  for (int i = 0; i < 16; ++i) {
    const int low = i < 8 ? (packed[i] & 0x0F) : (packed[i - 8] >> 4);
    const int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
    scales[i] = (low | (high << 4)) - 32;
  }
  int is = 0;
  unsigned m = 1;
  for (int n = 0; n < 256; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const float dl = d_all * static_cast<float>(scales[is++]);
        for (int l = 0; l < 16; ++l) {
          const int idx = l + 16 * half;
          const int value = ((q[idx] >> shift) & 3) - ((hmask[idx] & m) != 0 ? 0 : 4);
          *y++ = dl * static_cast<float>(value);
        }
      }
      m <<= 1;
    }
    q += 32;
  }
}

// The 6-bit scale and minimum of sub-block j of a Q4_K or Q5_K super-block.
void ScaleMinK4(int j, Block q, int* scale, int* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K (qh == nullptr) and Q5_K share their layout of scales and minimums.
void DequantizeQ45_K(Block b, Block qh, Block ql, float* y) {
  const float d = Half(b), dmin = Half(b + 2);
  Block scales = b + 4;
  unsigned u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2) {
    int sc = 0, m = 0;
    ScaleMinK4(is, scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
    ScaleMinK4(is + 1, scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) {
      const int high = qh != nullptr && (qh[l] & u1) != 0 ? 16 : 0;
      *y++ = d1 * static_cast<float>((ql[l] & 0x0F) + high) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      const int high = qh != nullptr && (qh[l] & u2) != 0 ? 16 : 0;
      *y++ = d2 * static_cast<float>((ql[l] >> 4) + high) - m2;
    }
    ql += 32;
    u1 <<= 2;
    u2 <<= 2;
  }
}

void DequantizeQ4_K(Block b, float* y) { DequantizeQ45_K(b, nullptr, b + 16, y); }
void DequantizeQ5_K(Block b, float* y) { DequantizeQ45_K(b, b + 16, b + 48, y); }

void DequantizeQ6_K(Block b, float* y) {
  Block ql = b, qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = Half(b + 208);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = static_cast<int>((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = static_cast<int>((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = static_cast<int>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = static_cast<int>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

using BlockDecoder = void (*)(Block, float*);

BlockDecoder DecoderFor(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_0:
      return DequantizeQ4_0;
    case GgmlType::kQ4_1:
      return DequantizeQ4_1;
    case GgmlType::kQ5_0:
      return DequantizeQ5_0;
    case GgmlType::kQ5_1:
      return DequantizeQ5_1;
    case GgmlType::kQ8_0:
      return DequantizeQ8_0;
    case GgmlType::kQ2_K:
      return DequantizeQ2_K;
    case GgmlType::kQ3_K:
      return DequantizeQ3_K;
    case GgmlType::kQ4_K:
      return DequantizeQ4_K;
    case GgmlType::kQ5_K:
      return DequantizeQ5_K;
    case GgmlType::kQ6_K:
      return DequantizeQ6_K;
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      break;
  }
  return nullptr;
}

}  // namespace

float HalfToFloat(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000) << 16;
  const uint32_t exponent = (half >> 10) & 0x1F;
  uint32_t mantissa = half & 0x3FF;
  uint32_t bits = 0;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000U | (mantissa << 13);  // infinity or NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // 112 = 127 - 15
  } else if (mantissa == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal half: normalise the mantissa into a float's implicit-one form.
    uint32_t e = 113;
    while ((mantissa & 0x400) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mantissa & 0x3FF) << 13);
  }
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

float BFloat16ToFloat(uint16_t bf16) {
  const uint32_t bits = static_cast<uint32_t>(bf16) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

const GgmlTypeInfo* FindGgmlType(uint32_t id) {
  for (const GgmlTypeInfo& info : kTypes) {
    if (static_cast<uint32_t>(info.type) == id) return &info;
  }
  return nullptr;
}

absl::Status Dequantize(GgmlType type, absl::string_view src, int64_t count, float* dst) {
  const GgmlTypeInfo* info = FindGgmlType(static_cast<uint32_t>(type));
  if (info == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat("no dequantization for GGML type ", static_cast<uint32_t>(type)));
  }
  if (count < 0 || count % info->block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        count, " values of ", info->name, " are not whole blocks of ", info->block_elements));
  }
  const uint64_t blocks = static_cast<uint64_t>(count) / info->block_elements;
  if (src.size() != blocks * info->block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(count, " values of ", info->name, " take ",
                                                   blocks * info->block_bytes, " bytes, got ",
                                                   src.size()));
  }
  const char* p = src.data();
  switch (type) {
    case GgmlType::kF32:
      for (int64_t i = 0; i < count; ++i) dst[i] = LoadLittleEndian<float>(p + 4 * i);
      return absl::OkStatus();
    case GgmlType::kF16:
      for (int64_t i = 0; i < count; ++i)
        dst[i] = HalfToFloat(LoadLittleEndian<uint16_t>(p + 2 * i));
      return absl::OkStatus();
    case GgmlType::kBF16:
      for (int64_t i = 0; i < count; ++i) {
        dst[i] = BFloat16ToFloat(LoadLittleEndian<uint16_t>(p + 2 * i));
      }
      return absl::OkStatus();
    default:
      break;
  }
  const BlockDecoder decode = DecoderFor(type);
  const auto* block = reinterpret_cast<const unsigned char*>(p);
  for (uint64_t i = 0; i < blocks; ++i) {
    decode(block + i * info->block_bytes, dst + i * info->block_elements);
  }
  return absl::OkStatus();
}

}  // namespace apeserve::model
