// errno as an absl::Status, with the code a caller can act on.
#ifndef APESERVE_MODEL_POSIX_ERROR_H_
#define APESERVE_MODEL_POSIX_ERROR_H_

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

// NOT_FOUND for a missing path, PERMISSION_DENIED for access, INVALID_ARGUMENT otherwise;
// the message is `what` and the system's description of `err`.
inline absl::Status PosixError(int err, absl::string_view what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::InvalidArgumentError(message);
  }
}

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_POSIX_ERROR_H_
