#include "tests/util/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

extern char** environ;

namespace apeserve::testing {
namespace {

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

Subprocess::Subprocess(const std::vector<std::string>& argv, const std::string& stdout_path,
                       const std::string& stderr_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, stdout_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  const int error = posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0) {
    std::fprintf(stderr, "cannot start %s: error %d\n", args[0], error);
    std::abort();
  }
}

Subprocess::~Subprocess() {
  if (!exit_status_.has_value()) {
    Signal(SIGKILL);
    Wait(absl::Seconds(30));
  }
}

void Subprocess::Signal(int signal) const { ::kill(pid_, signal); }

std::optional<int> Subprocess::Wait(absl::Duration timeout) {
  if (exit_status_.has_value()) return exit_status_;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t done = ::waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      exit_status_ = DecodeWaitStatus(status);
      return exit_status_;
    }
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

RunResult RunProgram(const std::vector<std::string>& argv, const std::string& scratch_dir,
                     absl::Duration timeout) {
  static std::atomic<int> counter{0};
  const int n = counter++;
  const std::string out = absl::StrCat(scratch_dir, "/run", n, ".out");
  const std::string err = absl::StrCat(scratch_dir, "/run", n, ".err");
  RunResult result;
  {
    Subprocess child(argv, out, err);
    result.exit_status = child.Wait(timeout).value_or(-1);
  }
  result.out = ReadFile(out);
  result.err = ReadFile(err);
  return result;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

}  // namespace apeserve::testing
