// An apeserve process for black-box tests: the real binary with the embedded model on a
// free loopback port and the given data directory, stopped with SIGTERM (or killed) by
// the caller or at destruction.
#ifndef APESERVE_TESTS_UTIL_RUNNING_SERVER_H_
#define APESERVE_TESTS_UTIL_RUNNING_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "tests/util/subprocess.h"
#include "tests/util/temp_dir.h"

namespace apeserve::testing {

class RunningServer {
 public:
  // Starts `apeserve` with logs and the port file under `dir`, named after `tag`.
  RunningServer(const TempDir& dir, const std::string& data_dir, const std::string& tag,
                const std::vector<std::string>& extra_flags = {});

  // Waits for the port file; nullopt if the server exited or took too long.
  std::optional<int> WaitForPort(absl::Duration timeout = absl::Seconds(120));

  // A channel to the server (after WaitForPort succeeded).
  std::shared_ptr<grpc::Channel> Channel() const;
  std::string Address() const;

  Subprocess& process() { return process_; }
  std::string Stderr() const;

 private:
  std::string port_file_;
  std::string stderr_path_;
  Subprocess process_;
  int port_ = 0;
};

}  // namespace apeserve::testing

#endif  // APESERVE_TESTS_UTIL_RUNNING_SERVER_H_
