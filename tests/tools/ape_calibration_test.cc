// The calibration search on objectives whose optimum is known: the grid is covered
// once, the compass search gets closer than the grid, the form, the mean and each
// family's best are chosen right, and bad grids and objective errors are reported.
#include "tools/ape_calibration.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <tuple>

#include "tests/util/status_matchers.h"

namespace apeserve::tools {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using model::ApeOptions;
using model::ApeScaleForm;
using ::testing::HasSubstr;

// A bowl per family with its least value at (t, s).
double Bowl(const ApeOptions& o, double t, double s) {
  return std::pow(o.temperature - t, 2) + std::pow(o.scale - s, 2) + 0.1;
}

// Two families whose optima differ; the additive form is worse everywhere by `penalty`
// (negative: better).
CalibrationObjective TwoFamilies(int* calls, double additive_penalty) {
  return [calls, additive_penalty](const ApeOptions& o) -> absl::StatusOr<std::vector<double>> {
    ++*calls;
    EXPECT_THAT(o.Validate(), IsOk());
    const double penalty = o.form == ApeScaleForm::kAdditive ? additive_penalty : 0.0;
    return std::vector<double>{Bowl(o, 0.62, 0.47) + penalty, Bowl(o, 0.80, 1.00) + penalty};
  };
}

TEST(ApeCalibrationTest, CoversTheGridOnceAndRefinesTowardsTheOptimum) {
  int calls = 0;
  const CalibrationSearchOptions options;
  int progress = 0;
  const auto result = SearchApeCalibration(options, TwoFamilies(&calls, 0.2),
                                           [&](const CalibrationPoint&) { ++progress; });
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(calls, static_cast<int>(result->points.size()));
  EXPECT_EQ(progress, calls);

  std::set<std::tuple<ApeScaleForm, float, float>> distinct;
  size_t grid = 0;
  for (const CalibrationPoint& point : result->points) {
    distinct.emplace(point.options.form, point.options.temperature, point.options.scale);
    grid += point.refined ? 0 : 1;
    EXPECT_EQ(point.options.mode, model::EncodingMode::kApe);
    EXPECT_DOUBLE_EQ(point.mean_divergence,
                     (point.family_divergence[0] + point.family_divergence[1]) / 2);
  }
  EXPECT_EQ(distinct.size(), result->points.size()) << "a point was evaluated twice";
  EXPECT_EQ(grid, options.forms.size() * options.temperatures.size() * options.scales.size());
  EXPECT_GT(result->points.size(), grid) << "no refinement";

  // The mean of the two bowls is least at (0.71, 0.735); the grid's nearest point is
  // (0.7, 0.7); two halvings from a 0.05 step reach within 0.0125 in each coordinate.
  const CalibrationPoint& best = result->points[result->best];
  EXPECT_EQ(best.options.form, ApeScaleForm::kMultiplicative);
  EXPECT_NEAR(best.options.temperature, 0.71, 0.0126);
  EXPECT_NEAR(best.options.scale, 0.735, 0.0126);
  EXPECT_TRUE(best.refined);
  for (const CalibrationPoint& point : result->points) {
    EXPECT_GE(point.mean_divergence, best.mean_divergence);
  }

  // Each family's own best, over every point evaluated.
  ASSERT_EQ(result->best_per_family.size(), 2U);
  for (size_t family = 0; family < 2; ++family) {
    const CalibrationPoint& own = result->points[result->best_per_family[family]];
    for (const CalibrationPoint& point : result->points) {
      EXPECT_GE(point.family_divergence[family], own.family_divergence[family]);
    }
  }
  const CalibrationPoint& first = result->points[result->best_per_family[0]];
  EXPECT_NEAR(first.options.temperature, 0.62, 0.05);
  EXPECT_NEAR(first.options.scale, 0.47, 0.05);

  // The best of one form: the additive points are all worse by 0.2, but have a best too.
  const auto additive = BestPoint(*result, 1, ApeScaleForm::kAdditive);
  ASSERT_TRUE(additive.has_value());
  EXPECT_EQ(result->points[*additive].options.form, ApeScaleForm::kAdditive);
  for (const CalibrationPoint& point : result->points) {
    if (point.options.form != ApeScaleForm::kAdditive) continue;
    EXPECT_GE(point.family_divergence[1], result->points[*additive].family_divergence[1]);
  }
  EXPECT_NEAR(result->points[*additive].options.temperature, 0.80, 0.05);
  EXPECT_NEAR(result->points[*additive].options.scale, 1.00, 0.05);
  EXPECT_EQ(BestPoint(*result, std::nullopt, std::nullopt), result->best);
}

TEST(ApeCalibrationTest, ChoosesTheFormThatFitsBetter) {
  int calls = 0;
  const auto result = SearchApeCalibration({}, TwoFamilies(&calls, -0.05));
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(result->points[result->best].options.form, ApeScaleForm::kAdditive);
}

TEST(ApeCalibrationTest, TheGridAloneWithoutRefinement) {
  int calls = 0;
  CalibrationSearchOptions options;
  options.forms = {ApeScaleForm::kAdditive};
  options.temperatures = {0.5F, 1.0F};
  options.scales = {0.5F, 1.0F};
  options.refine_rounds = 0;
  const auto result = SearchApeCalibration(options, TwoFamilies(&calls, 0.0));
  ASSERT_THAT(result, IsOk());
  ASSERT_EQ(result->points.size(), 4U);
  // Mean of the bowls at the corners: (0.5, 0.5) 0.278, (0.5, 1) 0.293, (1, 0.5) 0.318,
  // (1, 1) 0.333.
  const CalibrationPoint& best = result->points[result->best];
  EXPECT_FLOAT_EQ(best.options.temperature, 0.5F);
  EXPECT_FLOAT_EQ(best.options.scale, 0.5F);
  EXPECT_EQ(best.options.form, ApeScaleForm::kAdditive);
  EXPECT_FALSE(best.refined);
  EXPECT_EQ(BestPoint(*result, std::nullopt, ApeScaleForm::kMultiplicative), std::nullopt);
}

TEST(ApeCalibrationTest, NeverLeavesTheValidRange) {
  // The optimum lies below S = 0, beyond what APE accepts; the search walks to the
  // edge and evaluates only valid points (the objective checks each).
  CalibrationSearchOptions options;
  options.forms = {ApeScaleForm::kMultiplicative};
  options.temperatures = {0.5F};
  options.scales = {0.1F, 0.2F};
  options.refine_rounds = 3;
  const auto result =
      SearchApeCalibration(options, [](const ApeOptions& o) -> absl::StatusOr<std::vector<double>> {
        EXPECT_THAT(o.Validate(), IsOk());
        return std::vector<double>{Bowl(o, 0.5, -1.0)};
      });
  ASSERT_THAT(result, IsOk());
  EXPECT_LT(result->points[result->best].options.scale, 0.1F);
  EXPECT_GT(result->points[result->best].options.scale, 0.0F);
}

TEST(ApeCalibrationTest, ReportsBadGridsAndObjectiveErrors) {
  int calls = 0;
  CalibrationSearchOptions no_form;
  no_form.forms.clear();
  EXPECT_THAT(SearchApeCalibration(no_form, TwoFamilies(&calls, 0)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no APE scale form")));
  CalibrationSearchOptions bad_grid;
  bad_grid.temperatures = {0.5F, 0.0F};
  EXPECT_THAT(SearchApeCalibration(bad_grid, TwoFamilies(&calls, 0)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("calibration grid: temperature 0 is outside")));
  CalibrationSearchOptions off_lattice;  // 0.00003 is 0 on the search's 1e-4 lattice
  off_lattice.scales = {0.00003F, 0.5F};
  EXPECT_THAT(SearchApeCalibration(off_lattice, TwoFamilies(&calls, 0)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("calibration grid: scale 0 is outside")));
  CalibrationSearchOptions empty_grid;
  empty_grid.scales.clear();
  EXPECT_THAT(SearchApeCalibration(empty_grid, TwoFamilies(&calls, 0)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("needs temperatures")));
  EXPECT_EQ(calls, 0);

  EXPECT_THAT(SearchApeCalibration({},
                                   [](const ApeOptions&) -> absl::StatusOr<std::vector<double>> {
                                     return absl::DataLossError("item 3 is damaged");
                                   }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("item 3")));
  int count = 0;
  EXPECT_THAT(
      SearchApeCalibration({},
                           [&count](const ApeOptions&) -> absl::StatusOr<std::vector<double>> {
                             return std::vector<double>(++count == 1 ? 2 : 3, 0.0);
                           }),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("returned 3 families")));
}

}  // namespace
}  // namespace apeserve::tools
