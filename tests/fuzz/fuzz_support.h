// Helpers shared by the libFuzzer targets of tests/fuzz: an in-memory file for the
// readers that take a path (and map it), the split of one input into several fields,
// and a check that stops the process on a broken invariant so libFuzzer records it.
// Thread-safety: none; a fuzzer runs its inputs one at a time.
#ifndef APESERVE_TESTS_FUZZ_FUZZ_SUPPORT_H_
#define APESERVE_TESTS_FUZZ_FUZZ_SUPPORT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace apeserve::fuzz {

// An anonymous in-memory file (memfd) that holds the current input, reachable by a
// path, so that readers which open and mmap a path read the fuzzer's bytes with no
// disk I/O and nothing left behind. One per process, rewritten for every input.
class MemoryFile {
 public:
  MemoryFile();
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;
  ~MemoryFile();

  // Replaces the file's contents with `bytes`; returns the path to open.
  const std::string& Write(absl::string_view bytes);

 private:
  int fd_ = -1;
  std::string path_;
};

// `bytes` cut at every NUL into at most `fields` fields; the last field keeps any
// further NULs. Missing fields are empty. (JSON text cannot hold a raw NUL, so the
// separator never cuts a valid document.)
std::vector<absl::string_view> SplitFields(absl::string_view bytes, size_t fields);

// The input as a view.
inline absl::string_view AsView(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Aborts (a crash libFuzzer saves as an artifact) with `what` when `condition` is false.
void Check(bool condition, absl::string_view what);

}  // namespace apeserve::fuzz

#endif  // APESERVE_TESTS_FUZZ_FUZZ_SUPPORT_H_
