#include "tests/fuzz/fuzz_support.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace apeserve::fuzz {

MemoryFile::MemoryFile() : fd_(::memfd_create("apeserve-fuzz", MFD_CLOEXEC)) {
  if (fd_ < 0) {
    std::perror("memfd_create");
    std::abort();
  }
  path_ = absl::StrCat("/proc/self/fd/", fd_);
}

MemoryFile::~MemoryFile() { ::close(fd_); }

const std::string& MemoryFile::Write(absl::string_view bytes) {
  bool ok = ::ftruncate(fd_, 0) == 0;
  size_t written = 0;
  while (ok && written < bytes.size()) {
    const ssize_t n =
        ::pwrite(fd_, bytes.data() + written, bytes.size() - written, static_cast<off_t>(written));
    ok = n > 0;
    if (ok) written += static_cast<size_t>(n);
  }
  Check(ok, "cannot write the input to the in-memory file");
  return path_;
}

std::vector<absl::string_view> SplitFields(absl::string_view bytes, size_t fields) {
  std::vector<absl::string_view> out;
  out.reserve(fields);
  while (out.size() + 1 < fields) {
    const size_t nul = bytes.find('\0');
    if (nul == absl::string_view::npos) break;
    out.push_back(bytes.substr(0, nul));
    bytes.remove_prefix(nul + 1);
  }
  out.push_back(bytes);
  out.resize(fields);
  return out;
}

void Check(bool condition, absl::string_view what) {
  if (condition) return;
  std::fprintf(stderr, "fuzz invariant broken: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

}  // namespace apeserve::fuzz
