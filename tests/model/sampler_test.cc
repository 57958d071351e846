#include "model/sampler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "tests/util/status_matchers.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::testing::HasSubstr;

// Logits whose softmax (temperature 1) is exactly `probs`.
std::vector<float> LogitsOf(const std::vector<double>& probs) {
  std::vector<float> logits;
  logits.reserve(probs.size());
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

std::map<int32_t, int> Draw(const SamplingOptions& options, const std::vector<float>& logits,
                            int n) {
  Sampler sampler(options);
  std::map<int32_t, int> counts;
  for (int i = 0; i < n; ++i) ++counts[sampler.Next(logits, {}).token];
  return counts;
}

TEST(SamplerTest, GreedyPicksTheFirstBest) {
  Sampler sampler(SamplingOptions{});
  EXPECT_EQ(sampler.Next({0.1F, 3.0F, -1.0F, 3.0F}, {}).token, 1);
}

TEST(SamplerTest, ReportsTheModelsLogProbability) {
  const std::vector<float> logits = LogitsOf({0.5, 0.25, 0.25});
  SamplingOptions hot;
  hot.temperature = 5.0F;  // transforms do not change the reported value
  Sampler sampler(hot);
  for (int i = 0; i < 20; ++i) {
    const Sampler::Choice choice = sampler.Next(logits, {});
    EXPECT_NEAR(choice.logprob, std::log(choice.token == 0 ? 0.5 : 0.25), 1e-6);
  }
}

TEST(SamplerTest, SameSeedSameTokensOtherSeedOtherTokens) {
  const std::vector<float> logits = LogitsOf({0.2, 0.2, 0.2, 0.2, 0.2});
  SamplingOptions options;
  options.temperature = 1.0F;
  options.seed = 7;
  Sampler a(options), b(options);
  options.seed = 8;
  Sampler c(options);
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 64; ++i) {
    ta.push_back(a.Next(logits, {}).token);
    tb.push_back(b.Next(logits, {}).token);
    tc.push_back(c.Next(logits, {}).token);
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(SamplerTest, FrequenciesFollowTheTemperedDistribution) {
  const std::vector<double> probs = {0.6, 0.3, 0.1};
  SamplingOptions options;
  options.temperature = 2.0F;
  options.seed = 1;
  const int n = 40000;
  const auto counts = Draw(options, LogitsOf(probs), n);
  // At temperature 2 the weights are sqrt(p), renormalised.
  double total = 0;
  for (double p : probs) total += std::sqrt(p);
  for (int32_t t = 0; t < 3; ++t) {
    EXPECT_NEAR(counts.count(t) ? counts.at(t) / static_cast<double>(n) : 0.0,
                std::sqrt(probs[static_cast<size_t>(t)]) / total, 0.01)
        << "token " << t;
  }
}

TEST(SamplerTest, TopKOneIsGreedy) {
  SamplingOptions options;
  options.temperature = 50.0F;
  options.top_k = 1;
  const auto counts = Draw(options, LogitsOf({0.1, 0.6, 0.3}), 500);
  EXPECT_EQ(counts.size(), 1U);
  EXPECT_EQ(counts.begin()->first, 1);
}

TEST(SamplerTest, TopPKeepsTheSmallestSufficientSet) {
  SamplingOptions options;
  options.temperature = 1.0F;
  options.top_p = 0.75F;  // 0.5 + 0.3 reaches it; 0.2 is cut
  const auto counts = Draw(options, LogitsOf({0.5, 0.3, 0.2}), 4000);
  EXPECT_EQ(counts.count(2), 0U);
  EXPECT_GT(counts.at(0), 0);
  EXPECT_GT(counts.at(1), 0);
}

TEST(SamplerTest, MinPDropsTokensFarBelowTheBest) {
  SamplingOptions options;
  options.temperature = 1.0F;
  options.min_p = 0.5F;  // floor 0.25: keeps 0.5 and 0.3, drops 0.2
  const auto counts = Draw(options, LogitsOf({0.5, 0.3, 0.2}), 4000);
  EXPECT_EQ(counts.count(2), 0U);
  EXPECT_GT(counts.at(1), 0);
}

TEST(SamplerTest, RepetitionPenaltyDiscouragesSeenTokens) {
  SamplingOptions options;
  options.repetition_penalty = 1.2F;
  Sampler sampler(options);
  // 2.0 / 1.2 = 1.67 < 1.9: the seen token 0 loses its lead.
  EXPECT_EQ(sampler.Next({2.0F, 1.9F}, {0}).token, 1);
  EXPECT_EQ(sampler.Next({2.0F, 1.9F}, {1}).token, 0);
  // Negative logits are multiplied, pushing them further down.
  EXPECT_EQ(sampler.Next({-1.0F, -1.1F}, {0}).token, 1);
}

TEST(SamplerTest, ValidationNamesTheField) {
  const auto invalid = [](auto mutate) {
    SamplingOptions options;
    mutate(options);
    return options.Validate();
  };
  EXPECT_THAT(SamplingOptions{}.Validate(), IsOk());
  EXPECT_THAT(invalid([](auto& o) { o.temperature = -1; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("temperature is -1")));
  EXPECT_THAT(invalid([](auto& o) { o.top_p = 0; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_p is 0")));
  EXPECT_THAT(invalid([](auto& o) { o.top_k = -3; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_k is -3")));
  EXPECT_THAT(invalid([](auto& o) { o.min_p = 1; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("min_p is 1")));
  EXPECT_THAT(invalid([](auto& o) { o.repetition_penalty = 0; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("repetition_penalty is 0")));
  EXPECT_THAT(invalid([](auto& o) { o.max_tokens = 0; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_tokens is 0")));
  EXPECT_THAT(invalid([](auto& o) {
                o.stop = {"ok", ""};
              }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("stop[1] is empty")));
}

}  // namespace
}  // namespace apeserve::model
