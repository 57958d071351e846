// Reading the small files an operator hands the server (certificates, keys, the tokens
// file), with errors that name the file and what it was for.
// Thread-safety: a plain function.
#ifndef APESERVE_SERVER_CONFIG_FILE_H_
#define APESERVE_SERVER_CONFIG_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::server {

// The bytes of `path`, named `what` in errors: NOT_FOUND or PERMISSION_DENIED when it
// cannot be read, INVALID_ARGUMENT when it holds more than `max_bytes` (then it is not
// the file it should be).
absl::StatusOr<std::string> ReadConfigFile(const std::string& path, absl::string_view what,
                                           size_t max_bytes);

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_CONFIG_FILE_H_
