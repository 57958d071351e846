// The evaluation driver end to end on the embedded model, small: its reports must
// hold together (SEQUENTIAL is its own reference, PARALLEL equals APE at T = S = 1 in
// either form, calibration picks the least divergence among the points it evaluated,
// over both forms, and writes what the server reads).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "model/ape_options.h"
#include "tests/util/subprocess.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_paths.h"

namespace apeserve::tools {
namespace {

using ::apeserve::testing::ReadFile;
using ::apeserve::testing::RunProgram;
using ::testing::HasSubstr;

class ApeevalTest : public ::testing::Test {
 protected:
  std::vector<std::string> Command(const std::string& command) const {
    return {apeserve::testing::ApeevalBinary(), command,
            "--model=" + apeserve::testing::TestModelPath(), "--device=cpu", "--dtype=float32"};
  }
  apeserve::testing::TempDir dir_;
};

TEST_F(ApeevalTest, EvalReportsEveryModeConsistently) {
  std::vector<std::string> command = Command("eval");
  const std::string out = dir_.Join("eval.json");
  const std::string additive = dir_.Join("additive.json");
  ASSERT_TRUE(apeserve::testing::WriteFile(
      additive, R"({"temperature": 1.0, "scale": 1.0, "form": "additive"})"));
  command.insert(command.end(), {"--families=rag,icl", "--items=2", "--contexts=3",
                                 "--max_tokens=4", "--ape_temperature=1", "--ape_scale=1",
                                 "--calibration=" + additive, "--json_out=" + out});
  // Minutes, not seconds, on a loaded 2-core machine (the default is 60 s).
  const auto run = RunProgram(command, dir_.path(), absl::Minutes(5));
  ASSERT_EQ(run.exit_status, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("KL(seq||m)"));
  // A calibration that names no model is not said to be another model's.
  EXPECT_THAT(run.err, ::testing::Not(HasSubstr("made for another model")));
  const nlohmann::json results = nlohmann::json::parse(ReadFile(out));
  for (const char* family : {"rag", "icl"}) {
    SCOPED_TRACE(family);
    const nlohmann::json& rows = results.at("families").at(family);
    EXPECT_EQ(rows.at("items"), 2);
    const nlohmann::json& sequential = rows.at("sequential");
    const nlohmann::json& parallel = rows.at("parallel");
    const nlohmann::json& ape = rows.at("ape(multiplicative,T=1,S=1)");
    EXPECT_EQ(ape.at("source"), "flags");
    EXPECT_EQ(ape.at("form"), "multiplicative");
    const nlohmann::json& ape_additive = rows.at("ape(additive,T=1,S=1)");
    EXPECT_EQ(ape_additive.at("source"), additive);
    EXPECT_NEAR(ape.at("kl_from_sequential").get<double>(),
                ape_additive.at("kl_from_sequential").get<double>(), 1e-4);
    EXPECT_DOUBLE_EQ(sequential.at("kl_from_sequential").get<double>(), 0.0);
    EXPECT_GT(parallel.at("kl_from_sequential").get<double>(), 0.0);
    EXPECT_NEAR(parallel.at("kl_from_sequential").get<double>(),
                ape.at("kl_from_sequential").get<double>(), 1e-3);
    EXPECT_NEAR(parallel.at("answer_nll").get<double>(), ape.at("answer_nll").get<double>(), 1e-3);
    for (const nlohmann::json* row : {&sequential, &parallel, &ape}) {
      EXPECT_GE(row->at("accuracy").get<double>(), 0.0);
      EXPECT_LE(row->at("accuracy").get<double>(), 1.0);
      EXPECT_GT(row->at("answer_nll").get<double>(), 0.0);
      EXPECT_GT(row->at("first_token_ms").get<double>(), 0.0);
    }
  }
}

TEST_F(ApeevalTest, CalibrateChoosesTheLeastDivergenceOverBothFormsAndWritesWhatTheServerReads) {
  std::vector<std::string> command = Command("calibrate");
  const std::string out = dir_.Join("calibration.json");
  command.insert(command.end(), {"--families=rag,lookup", "--items=2", "--contexts=3",
                                 "--temperatures=0.5,1.0", "--scales=0.5,1.0", "--refine_rounds=1",
                                 "--out=" + out, "--per_family_out=" + dir_.path()});
  const auto run = RunProgram(command, dir_.path(), absl::Minutes(5));
  ASSERT_EQ(run.exit_status, 0) << run.err;
  const nlohmann::json result = nlohmann::json::parse(ReadFile(out));
  EXPECT_EQ(result.at("search_items_per_family"), 1);
  EXPECT_EQ(result.at("held_out_items_per_family"), 1);

  // Both forms' grids were evaluated, then refined; no point twice.
  const nlohmann::json& points = result.at("points");
  std::set<std::string> forms, distinct;
  int grid = 0, refined = 0;
  for (const nlohmann::json& point : points) {
    forms.insert(point.at("form").get<std::string>());
    distinct.insert(absl::StrCat(point.at("form").get<std::string>(), " ",
                                 point.at("temperature").get<double>(), " ",
                                 point.at("scale").get<double>()));
    (point.at("refined").get<bool>() ? refined : grid) += 1;
    // The mean over the two families.
    EXPECT_NEAR(point.at("kl_from_sequential").get<double>(),
                (point.at("per_family").at("rag").get<double>() +
                 point.at("per_family").at("lookup").get<double>()) /
                    2,
                1e-9);
  }
  EXPECT_EQ(forms, (std::set<std::string>{"multiplicative", "additive"}));
  EXPECT_EQ(grid, 8);
  EXPECT_GT(refined, 0);
  EXPECT_EQ(distinct.size(), points.size());
  EXPECT_EQ(result.at("points_evaluated"), points.size());

  // At S = 1 the two forms are the same function.
  for (const nlohmann::json& a : points) {
    for (const nlohmann::json& b : points) {
      if (a.at("form") != b.at("form") && a.at("scale") == 1.0 && b.at("scale") == 1.0 &&
          a.at("temperature") == b.at("temperature")) {
        EXPECT_NEAR(a.at("kl_from_sequential").get<double>(),
                    b.at("kl_from_sequential").get<double>(), 1e-4);
      }
    }
  }

  // The choice is the point of least mean KL on the search items.
  double least = 1e300;
  for (const nlohmann::json& point : points) {
    least = std::min(least, point.at("kl_from_sequential").get<double>());
  }
  EXPECT_DOUBLE_EQ(result.at("search_kl").get<double>(), least);
  bool found = false;
  for (const nlohmann::json& point : points) {
    if (point.at("kl_from_sequential").get<double>() == least) {
      found = found || (point.at("form") == result.at("form") &&
                        point.at("temperature") == result.at("temperature") &&
                        point.at("scale") == result.at("scale"));
    }
  }
  EXPECT_TRUE(found) << result.dump(2);
  EXPECT_TRUE(result.at("best_per_form").contains(result.at("form").get<std::string>()));
  for (const char* name : {"parallel", "ape_published", "ape_calibrated"}) {
    EXPECT_GE(result.at("held_out").at(name).at("kl_from_sequential").get<double>(), 0) << name;
  }
  EXPECT_THAT(run.out, HasSubstr("chosen ape("));
  const auto calibration = model::ParseApeCalibration(ReadFile(out));
  ASSERT_TRUE(calibration.ok()) << calibration.status();
  EXPECT_FLOAT_EQ(calibration->options.temperature, result.at("temperature").get<float>());
  EXPECT_FLOAT_EQ(calibration->options.scale, result.at("scale").get<float>());
  EXPECT_EQ(model::ApeScaleFormName(calibration->options.form),
            result.at("form").get<std::string>());
  EXPECT_EQ(calibration->model_fingerprint, result.at("model_fingerprint"));

  // Each family's own best is written as a calibration file too: the least KL of that
  // family among the points.
  for (const char* family : {"rag", "lookup"}) {
    SCOPED_TRACE(family);
    const std::string own_text = ReadFile(dir_.Join(std::string(family) + ".json"));
    const nlohmann::json own = nlohmann::json::parse(own_text);
    double family_least = 1e300;
    for (const nlohmann::json& point : points) {
      family_least = std::min(family_least, point.at("per_family").at(family).get<double>());
    }
    EXPECT_DOUBLE_EQ(own.at("search_kl").get<double>(), family_least);
    EXPECT_DOUBLE_EQ(own.at("held_out").at("ape_family_calibrated").at("kl_from_sequential"),
                     own.at("held_out_kl").get<double>());
    EXPECT_TRUE(model::ParseApeCalibration(own_text).ok());
    // And its best in each form, one of which is its best overall.
    double best_of_forms = 1e300;
    for (const char* form : {"multiplicative", "additive"}) {
      SCOPED_TRACE(form);
      const std::string text = ReadFile(dir_.Join(absl::StrCat(family, "-", form, ".json")));
      const nlohmann::json per_form = nlohmann::json::parse(text);
      EXPECT_EQ(per_form.at("form"), form);
      EXPECT_TRUE(model::ParseApeCalibration(text).ok());
      EXPECT_EQ(result.at("per_family").at(family).at("per_form").at(form).at("search_kl"),
                per_form.at("search_kl"));
      best_of_forms = std::min(best_of_forms, per_form.at("search_kl").get<double>());
    }
    EXPECT_DOUBLE_EQ(best_of_forms, family_least);
  }
}

TEST_F(ApeevalTest, ExplainsBadCommandsAndFlags) {
  const auto no_command = RunProgram(
      {apeserve::testing::ApeevalBinary(), "--model=" + apeserve::testing::TestModelPath()},
      dir_.path());
  EXPECT_EQ(no_command.exit_status, 1);
  EXPECT_THAT(no_command.err, HasSubstr("give one command: eval or calibrate"));
  std::vector<std::string> command = Command("eval");
  command.push_back("--families=poetry");
  const auto bad_family = RunProgram(command, dir_.path());
  EXPECT_EQ(bad_family.exit_status, 1);
  EXPECT_THAT(bad_family.err, HasSubstr("task family 'poetry' is not one of rag, lookup, icl"));
  command.back() = "--ape_form=sideways";
  const auto bad_form = RunProgram(command, dir_.path());
  EXPECT_EQ(bad_form.exit_status, 1);
  EXPECT_THAT(bad_form.err, HasSubstr("--ape_form: INVALID_ARGUMENT: APE scale form 'sideways'"));
  command.back() = "--families=rag,icl,rag";
  const auto twice = RunProgram(command, dir_.path());
  EXPECT_EQ(twice.exit_status, 1);
  EXPECT_THAT(twice.err, HasSubstr("--families names 'rag' twice"));
  command = Command("calibrate");
  command.push_back("--forms=additive,published");
  const auto bad_forms = RunProgram(command, dir_.path());
  EXPECT_EQ(bad_forms.exit_status, 1);
  EXPECT_THAT(bad_forms.err, HasSubstr("'published' is not one of multiplicative, additive"));
}

}  // namespace
}  // namespace apeserve::tools
