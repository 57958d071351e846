// What every RPC handler does around its work: tells tasks whether the caller still
// waits, counts the finished call by method and status code, and logs one line for it.
#ifndef APESERVE_SERVER_CALL_SUPPORT_H_
#define APESERVE_SERVER_CALL_SUPPORT_H_

#include <grpcpp/server_context.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/backend.h"
#include "server/query_task.h"

namespace apeserve::server {

// OK while the call is live; DEADLINE_EXCEEDED once its deadline passed, CANCELLED
// once the client went away or the server is cancelling calls at shutdown.
AliveCheck AliveCheckFor(grpc::ServerContextBase* context);

// One finished call: counted, logged as
//   call=Generate request_id=... status=OK ms=12.3 <details>
// and turned into the gRPC status to return.
grpc::Status FinishCall(const Backend& backend, absl::string_view method,
                        absl::string_view request_id, const absl::Status& status, absl::Time start,
                        absl::string_view details = "");

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_CALL_SUPPORT_H_
