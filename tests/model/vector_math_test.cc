// The vector helpers against plain scalar loops: e^x over the whole range a softmax
// uses, sums of exponentials of any length, dot products of eight rows, weighted sums
// of rows, maxima.
#include "model/vector_math.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace apeserve::model::vec {
namespace {

std::vector<float> RandomFloats(size_t n, float spread, uint32_t seed) {
  std::mt19937 random(seed);
  std::normal_distribution<float> normal(0.0F, spread);
  std::vector<float> values(n);
  for (float& value : values) value = normal(random);
  return values;
}

TEST(VectorMathTest, ExpIsWithinAFewUlpsDownToMinus87) {
  double worst = 0;
  for (int step = 0; step <= 5030; ++step) {  // -87 .. 0 in steps of 0.0173
    const float x0 = -87.0F + 0.0173F * static_cast<float>(step);
    float xs[kLanes];
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      xs[lane] = std::min(0.0F, x0 + 0.002F * static_cast<float>(lane));
    }
    float got[kLanes];
    Store(Exp(Load(xs)), got);
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      const double expected = std::exp(static_cast<double>(xs[lane]));
      worst = std::max(worst, std::abs(got[lane] - expected) / expected);
    }
  }
  EXPECT_LT(worst, 5e-7);
  float tiny[kLanes];
  Store(Exp(Broadcast(-1000.0F)), tiny);
  EXPECT_LT(tiny[0], 1e-37F);  // flushed to e^-87, not garbage
  EXPECT_GE(tiny[0], 0.0F);
}

TEST(VectorMathTest, ExpSumMatchesDoublesAtAnyLength) {
  for (const size_t n : {0, 1, 7, 8, 9, 511, 512, 513, 49152}) {
    SCOPED_TRACE(n);
    const std::vector<float> values = RandomFloats(n, 4.0F, 1);
    const float top = n == 0 ? 0.0F : MaxOf(values.data(), static_cast<int64_t>(n));
    double expected = 0;
    for (float v : values) expected += std::exp(static_cast<double>(v) - top);
    std::vector<float> written(n, -1.0F);
    const double got = ExpSum(values.data(), static_cast<int64_t>(n), top, written.data());
    EXPECT_NEAR(got, expected, 1e-6 * std::max(1.0, expected));
    EXPECT_EQ(ExpSum(values.data(), static_cast<int64_t>(n), top, nullptr), got);
    for (size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(written[i], std::exp(static_cast<double>(values[i]) - top), 1e-6) << i;
    }
  }
}

TEST(VectorMathTest, MaxOfFindsTheLargestAnywhere) {
  for (const int64_t n : {1, 5, 8, 13, 64}) {
    for (int64_t at = 0; at < n; ++at) {
      std::vector<float> values(static_cast<size_t>(n), -3.0F);
      values[static_cast<size_t>(at)] = 2.5F;
      ASSERT_EQ(MaxOf(values.data(), n), 2.5F) << n << " " << at;
    }
  }
  EXPECT_EQ(MaxOf(nullptr, 0), -std::numeric_limits<float>::infinity());
}

TEST(VectorMathTest, DotsAndWeightedRowsMatchScalarLoops) {
  for (const int64_t d : {8, 64, 72, 128}) {
    SCOPED_TRACE(d);
    const std::vector<float> a = RandomFloats(static_cast<size_t>(d), 1.0F, 2);
    const std::vector<float> rows = RandomFloats(static_cast<size_t>(kLanes * d), 1.0F, 3);
    float dots[kLanes];
    Store(DotEach(a.data(), rows.data(), d), dots);
    for (int64_t r = 0; r < kLanes; ++r) {
      double expected = 0;
      for (int64_t i = 0; i < d; ++i) expected += double{a[i]} * rows[r * d + i];
      EXPECT_NEAR(dots[r], expected, 1e-4);
      EXPECT_NEAR(Dot(a.data(), rows.data() + r * d, d), expected, 1e-4);
    }
    const int64_t count = 37;
    const std::vector<float> weights = RandomFloats(count, 1.0F, 4);
    const std::vector<float> many = RandomFloats(static_cast<size_t>(count * d), 1.0F, 5);
    std::vector<float> out(static_cast<size_t>(d));
    WeightedRows(weights.data(), many.data(), count, d, out.data());
    for (int64_t i = 0; i < d; ++i) {
      double expected = 0;
      for (int64_t j = 0; j < count; ++j) expected += double{weights[j]} * many[j * d + i];
      EXPECT_NEAR(out[i], expected, 1e-4) << i;
    }
  }
}

}  // namespace
}  // namespace apeserve::model::vec
