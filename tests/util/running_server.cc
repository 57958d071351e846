#include "tests/util/running_server.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "tests/util/test_paths.h"

namespace apeserve::testing {
namespace {

std::vector<std::string> Command(const std::string& data_dir, const std::string& port_file,
                                 const std::vector<std::string>& extra_flags) {
  std::vector<std::string> command = {ApeserveBinary(),
                                      "--model=" + TestModelPath(),
                                      "--data_dir=" + data_dir,
                                      "--listen=127.0.0.1:0",
                                      "--device=cpu",
                                      "--sync_writes=false",
                                      "--metrics_listen=127.0.0.1:0",
                                      "--port_file=" + port_file};
  command.insert(command.end(), extra_flags.begin(), extra_flags.end());
  return command;
}

}  // namespace

RunningServer::RunningServer(const TempDir& dir, const std::string& data_dir,
                             const std::string& tag, const std::vector<std::string>& extra_flags)
    : port_file_(dir.Join(tag + ".port")),
      stderr_path_(dir.Join(tag + ".err")),
      process_(Command(data_dir, port_file_, extra_flags), dir.Join(tag + ".out"), stderr_path_) {}

std::optional<int> RunningServer::WaitForPort(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int port = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFile(port_file_)), &port) && port > 0) {
      port_ = port;
      return port;
    }
    if (process_.Wait(absl::Milliseconds(50)).has_value()) return std::nullopt;
  }
  return std::nullopt;
}

std::string RunningServer::Address() const { return absl::StrCat("127.0.0.1:", port_); }

std::shared_ptr<grpc::Channel> RunningServer::Channel() const {
  return grpc::CreateChannel(Address(), grpc::InsecureChannelCredentials());
}

std::string RunningServer::Stderr() const { return ReadFile(stderr_path_); }

}  // namespace apeserve::testing
