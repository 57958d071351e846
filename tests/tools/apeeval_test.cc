// The evaluation driver end to end on the embedded model, small: its reports must
// hold together (SEQUENTIAL is its own reference, PARALLEL equals APE at T = S = 1,
// calibration picks from its grid and writes what the server reads).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>

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
  command.insert(command.end(), {"--families=rag,icl", "--items=2", "--contexts=3",
                                 "--max_tokens=4", "--json_out=" + out});
  // Minutes, not seconds, on a loaded 2-core machine (the default is 60 s).
  const auto run = RunProgram(command, dir_.path(), absl::Minutes(5));
  ASSERT_EQ(run.exit_status, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("KL(seq||m)"));
  const nlohmann::json results = nlohmann::json::parse(ReadFile(out));
  for (const char* family : {"rag", "icl"}) {
    SCOPED_TRACE(family);
    const nlohmann::json& rows = results.at("families").at(family);
    EXPECT_EQ(rows.at("items"), 2);
    const nlohmann::json& sequential = rows.at("sequential");
    const nlohmann::json& parallel = rows.at("parallel");
    const nlohmann::json& ape = rows.at("ape(T=1,S=1)");
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

TEST_F(ApeevalTest, CalibrateChoosesFromItsGridAndWritesWhatTheServerReads) {
  std::vector<std::string> command = Command("calibrate");
  const std::string out = dir_.Join("calibration.json");
  command.insert(command.end(), {"--family=lookup", "--items=2", "--contexts=3",
                                 "--temperatures=0.5,1.0", "--scales=0.75,1.0", "--out=" + out});
  const auto run = RunProgram(command, dir_.path(), absl::Minutes(5));
  ASSERT_EQ(run.exit_status, 0) << run.err;
  const nlohmann::json result = nlohmann::json::parse(ReadFile(out));
  const double temperature = result.at("temperature").get<double>();
  const double scale = result.at("scale").get<double>();
  EXPECT_TRUE(temperature == 0.5 || temperature == 1.0) << temperature;
  EXPECT_TRUE(scale == 0.75 || scale == 1.0) << scale;
  EXPECT_EQ(result.at("search_items"), 1);
  EXPECT_EQ(result.at("held_out_items"), 1);
  // The choice is the grid point of least KL on the search items.
  const nlohmann::json& grid = result.at("grid");
  ASSERT_EQ(grid.size(), 4U);
  double least = 1e300;
  for (const nlohmann::json& point : grid) {
    least = std::min(least, point.at("kl_from_sequential").get<double>());
  }
  EXPECT_DOUBLE_EQ(result.at("search_kl").get<double>(), least);
  for (const nlohmann::json& point : grid) {
    if (point.at("kl_from_sequential").get<double>() == least) {
      EXPECT_FLOAT_EQ(point.at("temperature").get<float>(), static_cast<float>(temperature));
      EXPECT_FLOAT_EQ(point.at("scale").get<float>(), static_cast<float>(scale));
    }
  }
  EXPECT_GE(result.at("held_out").at("ape_calibrated").at("kl_from_sequential").get<double>(), 0);
  EXPECT_THAT(run.out, HasSubstr("chosen T="));
  const auto options = model::ApeOptionsFromCalibration(ReadFile(out));
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_FLOAT_EQ(options->temperature, static_cast<float>(temperature));
  EXPECT_FLOAT_EQ(options->scale, static_cast<float>(scale));
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
}

}  // namespace
}  // namespace apeserve::tools
