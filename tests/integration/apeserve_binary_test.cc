// Black-box tests of the apeserve and apectl binaries: the real server on a loopback
// port with the embedded model and a fresh data directory, driven by real clients.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "ape/v1/admin.grpc.pb.h"
#include "tests/util/running_server.h"
#include "tests/util/subprocess.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_paths.h"

namespace apeserve {
namespace {

using ::apeserve::testing::ReadFile;
using ::apeserve::testing::RunningServer;
using ::apeserve::testing::RunProgram;
using ::apeserve::testing::TempDir;
using ::testing::HasSubstr;

class ApeserveBinaryTest : public ::testing::Test {
 protected:
  std::string Apectl() const { return apeserve::testing::ApectlBinary(); }
  TempDir dir_;
};

TEST_F(ApeserveBinaryTest, ServesInfoAndHealthAndStopsCleanlyOnSigterm) {
  RunningServer server(dir_, dir_.Join("data"), "server");
  const std::optional<int> port = server.WaitForPort();
  ASSERT_TRUE(port.has_value()) << "apeserve did not start:\n" << server.Stderr();
  const std::string target = absl::StrCat("--target=127.0.0.1:", *port);

  // A generated C++ client.
  auto stub = ape::v1::AdminService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", *port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  ape::v1::ServerInfo info;
  const grpc::Status status = stub->GetServerInfo(&context, {}, &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const std::string model = apeserve::testing::TestModelPath();
  EXPECT_EQ(info.model().path(), model);
  EXPECT_EQ(info.model().size_bytes(), std::filesystem::file_size(model));

  // apectl info prints the same reply as JSON.
  const auto apectl_info = RunProgram({Apectl(), target, "info"}, dir_.path());
  ASSERT_EQ(apectl_info.exit_status, 0) << apectl_info.err;
  const nlohmann::json json = nlohmann::json::parse(apectl_info.out);
  EXPECT_EQ(json.at("version"), info.version());
  EXPECT_EQ(json.at("device"), "cpu");
  EXPECT_EQ(json.at("model").at("format"), "gguf");
  EXPECT_EQ(json.at("model").at("tensor_count"), std::to_string(info.model().tensor_count()));

  // apectl health asks grpc.health.v1.
  const auto health = RunProgram({Apectl(), target, "health"}, dir_.path());
  EXPECT_EQ(health.exit_status, 0) << health.err;
  EXPECT_EQ(health.out, "SERVING\n");

  server.process().Signal(SIGTERM);
  EXPECT_EQ(server.process().Wait(absl::Seconds(30)), std::optional<int>(0)) << server.Stderr();
  EXPECT_THAT(server.Stderr(), HasSubstr("received SIGTERM; shutting down"));
  // jemalloc serves malloc(), returning freed memory from its background thread
  // (server/allocator.h); a sanitizer build has the sanitizer's allocator.
  EXPECT_THAT(server.Stderr(), ::testing::ContainsRegex(APESERVE_EXPECTED_ALLOCATOR));
}

TEST_F(ApeserveBinaryTest, KeepsDocumentsDirectoryAcrossRestarts) {
  const std::string data_dir = dir_.Join("data");
  for (const char* tag : {"first", "second"}) {
    RunningServer server(dir_, data_dir, tag);
    ASSERT_TRUE(server.WaitForPort().has_value()) << tag << " start failed:\n" << server.Stderr();
    server.process().Signal(SIGTERM);
    ASSERT_EQ(server.process().Wait(absl::Seconds(30)), std::optional<int>(0)) << server.Stderr();
  }
  EXPECT_THAT(ReadFile(dir_.Join("first.err")), HasSubstr("created"));
  EXPECT_THAT(ReadFile(dir_.Join("second.err")), ::testing::Not(HasSubstr("created")));
}

TEST_F(ApeserveBinaryTest, SecondServerOnTheSameDataDirectoryFails) {
  RunningServer first(dir_, dir_.Join("data"), "first");
  ASSERT_TRUE(first.WaitForPort().has_value()) << first.Stderr();
  RunningServer second(dir_, dir_.Join("data"), "second");
  EXPECT_FALSE(second.WaitForPort().has_value());
  EXPECT_EQ(second.process().Wait(absl::Seconds(30)), std::optional<int>(1));
  EXPECT_THAT(second.Stderr(), HasSubstr("lock"));
}

// The APE defaults a server reports: built in, then the calibration file, then flags.
ape::v1::ApeDefaults ApeDefaultsOf(RunningServer& server) {
  const std::optional<int> port = server.WaitForPort();
  EXPECT_TRUE(port.has_value()) << server.Stderr();
  if (!port.has_value()) return {};
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", *port), grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  ape::v1::ServerInfo info;
  EXPECT_TRUE(ape::v1::AdminService::NewStub(channel)
                  ->GetServerInfo(&context, ape::v1::GetServerInfoRequest(), &info)
                  .ok());
  return info.ape_defaults();
}

TEST_F(ApeserveBinaryTest, TakesApeDefaultsFromACalibrationFile) {
  {
    RunningServer server(dir_, dir_.Join("data"), "builtin");
    const ape::v1::ApeDefaults defaults = ApeDefaultsOf(server);
    // The published form at the authors' recommended values.
    EXPECT_FLOAT_EQ(defaults.temperature(), 0.9F);
    EXPECT_FLOAT_EQ(defaults.scale(), 0.9F);
    EXPECT_EQ(defaults.form(), ape::v1::APE_SCALE_FORM_MULTIPLICATIVE);
    EXPECT_EQ(defaults.calibration_file(), "");
  }
  const std::string calibration = dir_.Join("calibration.json");
  ASSERT_TRUE(apeserve::testing::WriteFile(
      calibration,
      R"({"model_fingerprint": "x", "temperature": 0.7, "scale": 0.6, "form": "additive"})"));
  {
    RunningServer server(dir_, dir_.Join("data"), "calibrated",
                         {"--ape_calibration=" + calibration});
    const ape::v1::ApeDefaults defaults = ApeDefaultsOf(server);
    EXPECT_FLOAT_EQ(defaults.temperature(), 0.7F);
    EXPECT_FLOAT_EQ(defaults.scale(), 0.6F);
    EXPECT_EQ(defaults.form(), ape::v1::APE_SCALE_FORM_ADDITIVE);
    EXPECT_EQ(defaults.calibration_file(), calibration);
    // Made for model "x": used, with a warning that names both models.
    EXPECT_THAT(server.Stderr(), HasSubstr("was made for model x, not this one"));
  }
  {
    // A flag beside the file overrides its one value, in any order on the command line.
    RunningServer server(
        dir_, dir_.Join("data"), "overridden",
        {"--ape_scale=1.25", "--ape_calibration=" + calibration, "--ape_form=multiplicative"});
    const ape::v1::ApeDefaults defaults = ApeDefaultsOf(server);
    EXPECT_FLOAT_EQ(defaults.temperature(), 0.7F);
    EXPECT_FLOAT_EQ(defaults.scale(), 1.25F);
    EXPECT_EQ(defaults.form(), ape::v1::APE_SCALE_FORM_MULTIPLICATIVE);
  }

  // Bad values are refused at start, naming the field.
  const auto start = [&](const std::string& flag) {
    return RunProgram(
        {apeserve::testing::ApeserveBinary(), "--model=" + apeserve::testing::TestModelPath(),
         "--data_dir=" + dir_.Join("data2"), flag},
        dir_.path());
  };
  ASSERT_TRUE(apeserve::testing::WriteFile(calibration, R"({"temperature": 0, "scale": 1})"));
  const auto refused = start("--ape_calibration=" + calibration);
  EXPECT_EQ(refused.exit_status, 2);
  EXPECT_THAT(refused.err, HasSubstr("calibration: temperature 0 is outside (0, 4]"));
  ASSERT_TRUE(apeserve::testing::WriteFile(
      calibration, R"({"temperature": 0.9, "scale": 0.9, "form": "published"})"));
  const auto bad_form = start("--ape_calibration=" + calibration);
  EXPECT_EQ(bad_form.exit_status, 2);
  EXPECT_THAT(bad_form.err, HasSubstr("'published' is not one of multiplicative, additive"));
  const auto bad_flag = start("--ape_scale=40");
  EXPECT_EQ(bad_flag.exit_status, 2);
  EXPECT_THAT(bad_flag.err, HasSubstr("APE defaults: scale 40 is outside (0, 16]"));
  const auto bad_form_flag = start("--ape_form=sideways");
  EXPECT_EQ(bad_form_flag.exit_status, 2);
  EXPECT_THAT(bad_form_flag.err, HasSubstr("--ape_form: APE scale form 'sideways'"));
}

// The calibration that deploy/run.sh passes: valid, made for the embedded model (no
// warning), and what the server then reports.
TEST_F(ApeserveBinaryTest, ShipsACalibrationForTheEmbeddedModel) {
  const std::string shipped =
      apeserve::testing::SourcePath("deploy/calibration/SmolLM2-135M-Instruct.Q4_1.json");
  const nlohmann::json calibration = nlohmann::json::parse(ReadFile(shipped));
  RunningServer server(dir_, dir_.Join("data"), "shipped", {"--ape_calibration=" + shipped});
  const ape::v1::ApeDefaults defaults = ApeDefaultsOf(server);
  EXPECT_FLOAT_EQ(defaults.temperature(), calibration.at("temperature").get<float>());
  EXPECT_FLOAT_EQ(defaults.scale(), calibration.at("scale").get<float>());
  EXPECT_EQ(defaults.form(), calibration.at("form") == "additive"
                                 ? ape::v1::APE_SCALE_FORM_ADDITIVE
                                 : ape::v1::APE_SCALE_FORM_MULTIPLICATIVE);
  EXPECT_FALSE(calibration.at("model_fingerprint").get<std::string>().empty());
  EXPECT_THAT(server.Stderr(), ::testing::Not(HasSubstr("was made for model")));
}

TEST_F(ApeserveBinaryTest, ExplainsEmptyFlagsAndDocumentsEveryFlagWithItsDefault) {
  const auto result = RunProgram({apeserve::testing::ApeserveBinary(), "--model="}, dir_.path());
  EXPECT_EQ(result.exit_status, 2);
  EXPECT_THAT(result.err, HasSubstr("--model is empty"));
  EXPECT_THAT(result.err, HasSubstr("Usage: apeserve [--model=FILE.gguf] [--data_dir=DIR]"));

  // --help lists every flag; the model defaults to the embedded one.
  const auto help = RunProgram({apeserve::testing::ApeserveBinary(), "--help"}, dir_.path());
  for (const char* flag :
       {"--model", "--data_dir", "--listen", "--device", "--dtype", "--ape_calibration",
        "--host_cache_mib", "--stored_kv_mib", "--sync_writes", "--kv_storage",
        "--max_context_bytes", "--max_contexts_per_request", "--max_query_tokens",
        "--max_new_tokens", "--max_queued_requests", "--max_running_requests", "--metrics_listen",
        "--log_format", "--shutdown_grace"}) {
    EXPECT_THAT(help.out + help.err, HasSubstr(flag)) << flag;
  }
  EXPECT_THAT(help.out + help.err, HasSubstr(apeserve::testing::TestModelPath()));
}

TEST_F(ApeserveBinaryTest, RefusesAFileThatIsNotAModel) {
  const std::string bogus = dir_.Join("bogus.gguf");
  ASSERT_TRUE(apeserve::testing::WriteFile(bogus, "this is not a model, just some text"));
  const auto result = RunProgram({apeserve::testing::ApeserveBinary(), "--model=" + bogus,
                                  "--data_dir=" + dir_.Join("data"), "--listen=127.0.0.1:0"},
                                 dir_.path());
  EXPECT_EQ(result.exit_status, 1);
  EXPECT_THAT(result.err, HasSubstr("not a GGUF file"));
}

TEST_F(ApeserveBinaryTest, ApectlExplainsUsageAndUnreachableServers) {
  const auto usage = RunProgram({Apectl()}, dir_.path());
  EXPECT_EQ(usage.exit_status, 2);
  EXPECT_THAT(usage.err, HasSubstr("Usage: apectl"));

  const auto unknown = RunProgram({Apectl(), "frobnicate"}, dir_.path());
  EXPECT_EQ(unknown.exit_status, 2);
  EXPECT_THAT(unknown.err, HasSubstr("unknown command 'frobnicate'"));

  // Port 1 on loopback has no server: the call fails within the deadline, with code 14.
  const auto unreachable =
      RunProgram({Apectl(), "--target=127.0.0.1:1", "--timeout=2s", "info"}, dir_.path());
  EXPECT_EQ(unreachable.exit_status, 1);
  EXPECT_THAT(unreachable.err, HasSubstr("gRPC code 14"));
}

}  // namespace
}  // namespace apeserve
