#include "model/ggml_type.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "tests/util/status_matchers.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::testing::HasSubstr;

uint32_t Bits(float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// Every one of the 65536 halves converts as c10's independent implementation does.
TEST(GgmlTypeTest, HalfToFloatMatchesC10ForEveryValue) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float want =
        static_cast<float>(c10::Half(static_cast<uint16_t>(h), c10::Half::from_bits()));
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "half 0x" << std::hex << h;
    } else {
      EXPECT_EQ(Bits(got), Bits(want)) << "half 0x" << std::hex << h;
    }
  }
}

TEST(GgmlTypeTest, BFloat16ToFloatMatchesC10ForEveryValue) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const float want =
        static_cast<float>(c10::BFloat16(static_cast<uint16_t>(b), c10::BFloat16::from_bits()));
    const float got = BFloat16ToFloat(static_cast<uint16_t>(b));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "bf16 0x" << std::hex << b;
    } else {
      EXPECT_EQ(Bits(got), Bits(want)) << "bf16 0x" << std::hex << b;
    }
  }
}

TEST(GgmlTypeTest, KnowsTheLayoutsOfTheTypesItReads) {
  const GgmlTypeInfo* q4_k = FindGgmlType(12);
  ASSERT_NE(q4_k, nullptr);
  EXPECT_EQ(q4_k->name, "Q4_K");
  EXPECT_EQ(q4_k->block_elements, 256U);
  EXPECT_EQ(q4_k->block_bytes, 144U);
  EXPECT_EQ(FindGgmlType(4), nullptr);   // retired Q4_2
  EXPECT_EQ(FindGgmlType(16), nullptr);  // IQ2_XXS: not read
  EXPECT_EQ(FindGgmlType(0xFFFFFFFF), nullptr);
}

// A Q8_0 block by hand: scale 0.5 (half 0x3800), then 32 signed bytes.
TEST(GgmlTypeTest, DequantizesAHandMadeQ8_0Block) {
  std::string block = {'\x00', '\x38'};
  for (int i = 0; i < 32; ++i) block.push_back(static_cast<char>(i - 16));
  std::vector<float> out(32);
  ASSERT_THAT(Dequantize(GgmlType::kQ8_0, block, 32, out.data()), IsOk());
  for (int i = 0; i < 32; ++i)
    EXPECT_EQ(out[static_cast<size_t>(i)], 0.5F * static_cast<float>(i - 16));
}

// A Q4_1 block by hand: scale 2, minimum -1, then nibbles: low ones are values 0-15,
// high ones values 16-31.
TEST(GgmlTypeTest, DequantizesAHandMadeQ4_1Block) {
  std::string block = {'\x00', '\x40', '\x00', '\xBC'};  // 2.0, -1.0
  for (int j = 0; j < 16; ++j) block.push_back(static_cast<char>(j | ((15 - j) << 4)));
  std::vector<float> out(32);
  ASSERT_THAT(Dequantize(GgmlType::kQ4_1, block, 32, out.data()), IsOk());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[static_cast<size_t>(j)], 2.0F * static_cast<float>(j) - 1.0F);
    EXPECT_EQ(out[static_cast<size_t>(j + 16)], 2.0F * static_cast<float>(15 - j) - 1.0F);
  }
}

TEST(GgmlTypeTest, RefusesPartialBlocksAndWrongSizes) {
  std::vector<float> out(64);
  EXPECT_THAT(Dequantize(GgmlType::kQ4_0, std::string(18, '\0'), 16, out.data()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not whole blocks of 32")));
  EXPECT_THAT(Dequantize(GgmlType::kQ4_0, std::string(17, '\0'), 32, out.data()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("take 18 bytes, got 17")));
  EXPECT_THAT(Dequantize(GgmlType::kF32, std::string(12, '\0'), 4, out.data()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("take 16 bytes")));
}

}  // namespace
}  // namespace apeserve::model
