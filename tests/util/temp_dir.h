// A fresh folder under $TMPDIR (or /tmp), removed with everything in it on destruction.
#ifndef APESERVE_TESTS_UTIL_TEMP_DIR_H_
#define APESERVE_TESTS_UTIL_TEMP_DIR_H_

#include <string>

#include "absl/strings/string_view.h"

namespace apeserve::testing {

class TempDir {
 public:
  TempDir();  // aborts the test binary when no folder can be made
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();

  const std::string& path() const { return path_; }
  // path()/name
  std::string Join(absl::string_view name) const;

 private:
  std::string path_;
};

// Writes `bytes` to the file at `path`, replacing it. Returns false on failure.
bool WriteFile(const std::string& path, absl::string_view bytes);

}  // namespace apeserve::testing

#endif  // APESERVE_TESTS_UTIL_TEMP_DIR_H_
