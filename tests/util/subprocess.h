// Runs a program as a child process for black-box tests of our binaries, with its
// standard output and error captured in files.
#ifndef APESERVE_TESTS_UTIL_SUBPROCESS_H_
#define APESERVE_TESTS_UTIL_SUBPROCESS_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace apeserve::testing {

class Subprocess {
 public:
  // Starts argv[0] (a path) with `argv`; its stdout and stderr go to the two files.
  // Aborts the test binary if the program cannot be started.
  Subprocess(const std::vector<std::string>& argv, const std::string& stdout_path,
             const std::string& stderr_path);
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  ~Subprocess();  // SIGKILLs the child if it still runs

  pid_t pid() const { return pid_; }
  void Signal(int signal) const;
  // The exit status (128 + N when killed by signal N), or nullopt if the child still
  // runs after `timeout`.
  std::optional<int> Wait(absl::Duration timeout);

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
};

struct RunResult {
  int exit_status = -1;  // -1: timed out (the child was killed)
  std::string out;
  std::string err;
};

// Runs `argv` to completion (at most `timeout`), capturing its output in `scratch_dir`.
RunResult RunProgram(const std::vector<std::string>& argv, const std::string& scratch_dir,
                     absl::Duration timeout = absl::Seconds(60));

// The whole content of a file, or "" if it cannot be read.
std::string ReadFile(const std::string& path);

}  // namespace apeserve::testing

#endif  // APESERVE_TESTS_UTIL_SUBPROCESS_H_
