// Early-return helpers for absl::Status and absl::StatusOr.
//
// Debian's abseil (20220623) ships neither RETURN_IF_ERROR nor ASSIGN_OR_RETURN; these
// two are the whole of our replacement. Prefixed so they never clash with a library's.
#ifndef APESERVE_COMMON_STATUS_MACROS_H_
#define APESERVE_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns the status of `expr` from the enclosing function unless it is OK.
#define APE_RETURN_IF_ERROR(expr)                                                   \
  do {                                                                              \
    if (::absl::Status ape_status_ = (expr); !ape_status_.ok()) return ape_status_; \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); returns its status unless it is OK, else
// moves its value into `lhs`, which may be a declaration: APE_ASSIGN_OR_RETURN(auto x, F());
#define APE_ASSIGN_OR_RETURN(lhs, rexpr) \
  APE_ASSIGN_OR_RETURN_IMPL_(APE_STATUS_CONCAT_(ape_statusor_, __LINE__), lhs, rexpr)

#define APE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)   \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = *std::move(statusor)

#define APE_STATUS_CONCAT_(a, b) APE_STATUS_CONCAT_IMPL_(a, b)
#define APE_STATUS_CONCAT_IMPL_(a, b) a##b

#endif  // APESERVE_COMMON_STATUS_MACROS_H_
