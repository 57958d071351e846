#include "cache/kv_quantization.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "tests/cache/synthetic_kv.h"
#include "tests/util/status_matchers.h"

namespace apeserve::cache {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;

std::vector<float> AsFloats(const std::string& bytes, model::KvDtype dtype) {
  std::vector<float> out;
  const size_t element = model::KvDtypeSize(dtype);
  for (size_t i = 0; i < bytes.size(); i += element) {
    uint32_t bits = 0;
    if (dtype == model::KvDtype::kFloat32) {
      std::memcpy(&bits, bytes.data() + i, 4);
    } else {
      uint16_t half = 0;
      std::memcpy(&half, bytes.data() + i, 2);
      bits = static_cast<uint32_t>(half) << 16;
    }
    float value = 0;
    std::memcpy(&value, &bits, 4);
    out.push_back(value);
  }
  return out;
}

// Checks the documented bound element by element: |x - x'| <= s/2 (+ rounding to the
// dtype), s = max |x| over the group / 127.
void ExpectWithinBound(const model::KvSegment& kv, KvQuantization quantization) {
  for (size_t layer = 0; layer < kv.layers.size(); ++layer) {
    absl::StatusOr<std::string> quantized = QuantizeLayer(kv.layers[layer], kv, quantization);
    ASSERT_THAT(quantized, IsOk());
    EXPECT_EQ(quantized->size(), QuantizedLayerBytes(kv, quantization));
    EXPECT_LT(quantized->size(), kv.LayerBytes());
    absl::StatusOr<std::string> restored = DequantizeLayer(*quantized, kv, quantization);
    ASSERT_THAT(restored, IsOk());
    const std::vector<float> x = AsFloats(kv.layers[layer], kv.dtype);
    const std::vector<float> y = AsFloats(*restored, kv.dtype);
    ASSERT_EQ(x.size(), y.size());
    const int64_t heads = kv.kv_heads, length = kv.length, dim = kv.head_dim;
    const bool per_channel = quantization == KvQuantization::kInt8PerChannel;
    double worst_ratio = 0;
    for (int64_t tensor = 0; tensor < 2; ++tensor) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t t = 0; t < length; ++t) {
          for (int64_t c = 0; c < dim; ++c) {
            float group_max = 0;
            for (int64_t j = 0; j < (per_channel ? length : dim); ++j) {
              const int64_t index = ((tensor * heads + h) * length + (per_channel ? j : t)) * dim +
                                    (per_channel ? c : j);
              group_max = std::max(group_max, std::fabs(x[static_cast<size_t>(index)]));
            }
            const size_t i = static_cast<size_t>(((tensor * heads + h) * length + t) * dim + c);
            const double half_step = group_max / 127.0 / 2.0;
            const double rounding =
                kv.dtype == model::KvDtype::kBFloat16 ? std::fabs(x[i]) / 128.0 : 1e-6;
            const double error = std::fabs(x[i] - y[i]);
            ASSERT_LE(error, half_step * 1.0001 + rounding) << "layer " << layer << " index " << i;
            worst_ratio = std::max(worst_ratio, error / (half_step + 1e-30));
          }
        }
      }
    }
    // The bound is tight: some element comes close to half a step.
    EXPECT_GT(worst_ratio, 0.5);
  }
}

TEST(KvQuantizationTest, Int8PerChannelStaysWithinItsBound) {
  ExpectWithinBound(testing::SyntheticKv("m", "p", testing::SyntheticTokens(9),
                                         {.num_layers = 2, .kv_heads = 3, .head_dim = 16}),
                    KvQuantization::kInt8PerChannel);
}

TEST(KvQuantizationTest, Int8PerTokenStaysWithinItsBound) {
  ExpectWithinBound(testing::SyntheticKv("m", "p", testing::SyntheticTokens(9),
                                         {.num_layers = 2, .kv_heads = 3, .head_dim = 16}),
                    KvQuantization::kInt8PerToken);
}

TEST(KvQuantizationTest, BFloat16KvStaysWithinItsBound) {
  ExpectWithinBound(
      testing::SyntheticKv("m", "p", testing::SyntheticTokens(7),
                           {.dtype = model::KvDtype::kBFloat16, .kv_heads = 2, .head_dim = 8}),
      KvQuantization::kInt8PerChannel);
}

TEST(KvQuantizationTest, RefusesFloat16NonFiniteValuesAndWrongSizes) {
  const model::KvSegment half = testing::SyntheticKv("m", "p", testing::SyntheticTokens(2),
                                                     {.dtype = model::KvDtype::kFloat16});
  EXPECT_FALSE(CanQuantize(model::KvDtype::kFloat16, KvQuantization::kInt8PerToken));
  EXPECT_TRUE(CanQuantize(model::KvDtype::kFloat16, KvQuantization::kNone));
  EXPECT_THAT(QuantizeLayer(half.layers[0], half, KvQuantization::kInt8PerToken),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));

  model::KvSegment kv = testing::SyntheticKv("m", "p", testing::SyntheticTokens(2), {});
  EXPECT_THAT(QuantizeLayer(kv.layers[0].substr(1), kv, KvQuantization::kInt8PerToken),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
  const float infinity = std::numeric_limits<float>::infinity();
  std::memcpy(kv.layers[0].data() + 8, &infinity, sizeof(float));
  EXPECT_THAT(QuantizeLayer(kv.layers[0], kv, KvQuantization::kInt8PerChannel),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
  EXPECT_THAT(DequantizeLayer("short", kv, KvQuantization::kInt8PerChannel),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
}

TEST(KvQuantizationTest, NamesRoundTrip) {
  for (const KvQuantization q :
       {KvQuantization::kNone, KvQuantization::kInt8PerChannel, KvQuantization::kInt8PerToken}) {
    EXPECT_THAT(ParseKvQuantization(KvQuantizationName(q)), testing::IsOkAndHolds(q));
  }
  EXPECT_THAT(ParseKvQuantization("int4"),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
}

}  // namespace
}  // namespace apeserve::cache
