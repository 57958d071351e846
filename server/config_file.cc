#include "server/config_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace apeserve::server {

absl::StatusOr<std::string> ReadConfigFile(const std::string& path, absl::string_view what,
                                           size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    const std::string message =
        absl::StrCat(what, " '", path, "' cannot be read: ", std::strerror(error));
    if (error == EACCES) return absl::PermissionDeniedError(message);
    return absl::NotFoundError(message);
  }
  std::ostringstream text;
  text << in.rdbuf();
  std::string bytes = std::move(text).str();
  if (bytes.size() > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' is ", bytes.size(),
                                                   " bytes, more than such a file holds"));
  }
  return bytes;
}

}  // namespace apeserve::server
