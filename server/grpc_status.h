// The one translation of absl::Status into grpc::Status (STYLE.md rule 4).
#ifndef APESERVE_SERVER_GRPC_STATUS_H_
#define APESERVE_SERVER_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace apeserve::server {

// Same code, same message.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_GRPC_STATUS_H_
