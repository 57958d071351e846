// The one place where libtorch's exceptions (c10::Error) become absl statuses: every
// catch at model/'s border calls it. Internal to model/ (torch types). Thread-safe.
#ifndef APESERVE_MODEL_TORCH_ERROR_H_
#define APESERVE_MODEL_TORCH_ERROR_H_

#include <c10/util/Exception.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

// RESOURCE_EXHAUSTED for out-of-memory errors, INTERNAL otherwise; the message starts
// with `what` and carries libtorch's, without its backtrace.
absl::Status FromTorchError(const c10::Error& error, absl::string_view what);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_TORCH_ERROR_H_
