// The whole stack in one process: libtorch (the device self-test), RocksDB (the
// store) and a gRPC server on loopback answering a gRPC client of this test binary.
#include "server/ape_server.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "ape/v1/admin.grpc.pb.h"
#include "tests/util/status_matchers.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_paths.h"

namespace apeserve::server {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::apeserve::testing::TempDir;
using ::testing::HasSubstr;

class ApeServerTest : public ::testing::Test {
 protected:
  ServerOptions Options() const {
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.model_path = apeserve::testing::TestModelPath();
    options.data_dir = dir_.Join("data");
    options.device = "cpu";
    options.metrics_address = "";  // tests run side by side: no fixed port
    return options;
  }

  TempDir dir_;
};

TEST_F(ApeServerTest, AnswersGetServerInfoOverLoopback) {
  const ServerOptions options = Options();
  auto server = ApeServer::Start(options);
  ASSERT_THAT(server, IsOk());
  ASSERT_GT((*server)->port(), 0);

  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*server)->port()),
                                     grpc::InsecureChannelCredentials());
  auto stub = ape::v1::AdminService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  ape::v1::ServerInfo info;
  const grpc::Status status = stub->GetServerInfo(&context, {}, &info);
  ASSERT_TRUE(status.ok()) << status.error_message();

  EXPECT_EQ(info.version(), APESERVE_VERSION);
  EXPECT_THAT(info.torch_version(), ::testing::StartsWith("2."));
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(info.data_dir(), options.data_dir);
  EXPECT_GT(info.start_time_unix_ms(), 0);
  EXPECT_EQ(info.model().path(), options.model_path);
  EXPECT_EQ(info.model().format(), "gguf");
  EXPECT_EQ(info.model().format_version(), 3U);
  EXPECT_EQ(info.model().size_bytes(), std::filesystem::file_size(options.model_path));
  EXPECT_GT(info.model().tensor_count(), 0U);
  // The store was created in the data directory.
  EXPECT_TRUE(std::filesystem::exists(options.data_dir + "/CURRENT"));

  (*server)->Shutdown(absl::Seconds(1));
  (*server)->Wait();
}

TEST_F(ApeServerTest, RefusesAMalformedModelBeforeListening) {
  ServerOptions options = Options();
  options.model_path = dir_.Join("not-a-model.gguf");
  ASSERT_TRUE(apeserve::testing::WriteFile(options.model_path, std::string(64, 'x')));
  EXPECT_THAT(ApeServer::Start(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a GGUF file")));
}

TEST_F(ApeServerTest, RefusesMissingOptions) {
  ServerOptions options = Options();
  options.model_path.clear();
  EXPECT_THAT(ApeServer::Start(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model_path")));
  options = Options();
  options.data_dir.clear();
  EXPECT_THAT(ApeServer::Start(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("data_dir")));
}

TEST_F(ApeServerTest, RefusesAnUnknownDevice) {
  ServerOptions options = Options();
  options.device = "tpu";
  EXPECT_THAT(ApeServer::Start(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("device 'tpu'")));
}

TEST_F(ApeServerTest, RefusesAnAddressInUse) {
  auto first = ApeServer::Start(Options());
  ASSERT_THAT(first, IsOk());
  ServerOptions options = Options();
  options.data_dir = dir_.Join("other-data");
  options.listen_address = absl::StrCat("127.0.0.1:", (*first)->port());
  EXPECT_THAT(ApeServer::Start(options),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("cannot listen")));
}

}  // namespace
}  // namespace apeserve::server
