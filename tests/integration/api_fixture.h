// The fixture of the API's end-to-end tests: the real apeserve binary with the embedded
// model on a loopback port and a temporary data directory, its generated C++ clients,
// and the documents the tests ask about.
#ifndef APESERVE_TESTS_INTEGRATION_API_FIXTURE_H_
#define APESERVE_TESTS_INTEGRATION_API_FIXTURE_H_

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "ape/v1/admin.grpc.pb.h"
#include "ape/v1/context.grpc.pb.h"
#include "ape/v1/generation.grpc.pb.h"
#include "tests/util/running_server.h"
#include "tests/util/temp_dir.h"

namespace apeserve::testing {

inline constexpr char kGoats[] =
    "Martha keeps forty goats on her farm near the river. Every morning she milks them and "
    "sells the cheese at the market in town.";
inline constexpr char kBridge[] =
    "The old stone bridge in the village was built in 1742 and repaired after the flood "
    "of 1903.";
inline constexpr char kBees[] =
    "Tom keeps bees behind the school; his honey won a prize last summer.";

// The clients of one server.
struct Clients {
  explicit Clients(const std::shared_ptr<grpc::Channel>& channel)
      : contexts(ape::v1::ContextService::NewStub(channel)),
        generation(ape::v1::GenerationService::NewStub(channel)),
        admin(ape::v1::AdminService::NewStub(channel)) {}
  std::unique_ptr<ape::v1::ContextService::Stub> contexts;
  std::unique_ptr<ape::v1::GenerationService::Stub> generation;
  std::unique_ptr<ape::v1::AdminService::Stub> admin;
};

inline void SetDeadline(grpc::ClientContext& context, absl::Duration timeout = absl::Seconds(120)) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

inline absl::StatusCode CodeOf(const grpc::Status& status) {
  return static_cast<absl::StatusCode>(status.error_code());
}

class ApiTest : public ::testing::Test {
 protected:
  // Starts a server on `data_dir` (default: this test's) and connects to it.
  RunningServer& Start(const std::vector<std::string>& flags = {}, const std::string& tag = "api",
                       const std::string& data_dir = "") {
    server_ = std::make_unique<RunningServer>(dir_, data_dir.empty() ? dir_.Join("data") : data_dir,
                                              tag, flags);
    const std::optional<int> port = server_->WaitForPort();
    EXPECT_TRUE(port.has_value()) << server_->Stderr();
    clients_ = std::make_unique<Clients>(server_->Channel());
    return *server_;
  }

  // Stops the server with SIGTERM; it must exit 0.
  void Stop() {
    server_->process().Signal(SIGTERM);
    EXPECT_EQ(server_->process().Wait(absl::Seconds(60)), std::optional<int>(0))
        << server_->Stderr();
  }

  grpc::Status Create(const std::string& id, const std::string& text,
                      const std::map<std::string, std::string>& labels = {},
                      ape::v1::Context* out = nullptr, const std::string& namespace_id = "") {
    ape::v1::CreateContextRequest request;
    request.set_namespace_(namespace_id);
    request.set_context_id(id);
    request.set_text(text);
    request.mutable_labels()->insert(labels.begin(), labels.end());
    grpc::ClientContext context;
    SetDeadline(context);
    ape::v1::Context reply;
    grpc::Status status = clients_->contexts->CreateContext(&context, request, &reply);
    if (out != nullptr) *out = reply;
    return status;
  }

  static ape::v1::GenerateRequest Greedy(const std::string& query,
                                         const std::vector<std::string>& ids,
                                         ape::v1::EncodingMode mode, int max_tokens = 12) {
    ape::v1::GenerateRequest request;
    request.set_query(query);
    for (const std::string& id : ids) request.add_context_ids(id);
    request.set_mode(mode);
    request.mutable_sampling()->set_max_tokens(max_tokens);
    request.mutable_sampling()->set_temperature(0);
    return request;
  }

  grpc::Status Generate(const ape::v1::GenerateRequest& request, ape::v1::GenerateResponse& reply,
                        absl::Duration timeout = absl::Seconds(120)) {
    grpc::ClientContext context;
    SetDeadline(context, timeout);
    return clients_->generation->Generate(&context, request, &reply);
  }

  ape::v1::Stats Stats() {
    grpc::ClientContext context;
    SetDeadline(context);
    ape::v1::Stats stats;
    EXPECT_TRUE(clients_->admin->GetStats(&context, {}, &stats).ok());
    return stats;
  }

  ape::v1::Load Load() {
    grpc::ClientContext context;
    SetDeadline(context);
    ape::v1::Load load;
    EXPECT_TRUE(clients_->admin->GetLoad(&context, {}, &load).ok());
    return load;
  }

  TempDir dir_;
  std::unique_ptr<RunningServer> server_;
  std::unique_ptr<Clients> clients_;
};

// Starts a stream that generates `max_tokens` tokens (EOS ignored).
struct LongStream {
  LongStream(ape::v1::GenerationService::Stub& stub, int max_tokens) {
    ape::v1::GenerateRequest request;
    request.set_query("Tell me a very long story about goats.");
    request.mutable_sampling()->set_max_tokens(max_tokens);
    request.mutable_sampling()->set_ignore_eos(true);
    SetDeadline(context, absl::Seconds(300));
    reader = stub.GenerateStream(&context, request);
  }
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<ape::v1::GenerateStreamResponse>> reader;
};

}  // namespace apeserve::testing

#endif  // APESERVE_TESTS_INTEGRATION_API_FIXTURE_H_
