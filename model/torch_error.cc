#include "model/torch_error.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace apeserve::model {

absl::Status FromTorchError(const c10::Error& error, absl::string_view what) {
  const std::string message = absl::StrCat(what, ": ", error.what_without_backtrace());
  if (dynamic_cast<const c10::OutOfMemoryError*>(&error) != nullptr) {
    return absl::ResourceExhaustedError(message);
  }
  return absl::InternalError(message);
}

}  // namespace apeserve::model
