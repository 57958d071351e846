// What apectl's commands share: the connection, deadlines, exit codes, and printing
// replies as JSON.
#ifndef APESERVE_TOOLS_APECTL_COMMON_H_
#define APESERVE_TOOLS_APECTL_COMMON_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "google/protobuf/message.h"

namespace apeserve::apectl {

// Exit codes scripts can rely on.
enum ExitCode : int {
  kOk = 0,
  kCallFailed = 1,    // the server answered with an error, or could not be reached
  kBadUsage = 2,      // bad command line
  kNotServing = 3,    // health: the server is not serving
  kNotFound = 4,      // get / update: no such context
  kPartialIngest = 5  // ingest: some documents failed (the others were stored)
};

struct Connection {
  std::shared_ptr<grpc::Channel> channel;
  std::string namespace_id;
  bool json = false;
};

// Sets the call's deadline from --timeout (none when it is 0; `fallback` applies when
// --timeout is 0, e.g. 5 s for health checks) and its bearer token from --token.
void PrepareCall(grpc::ClientContext& context, absl::Duration fallback = absl::ZeroDuration());

// Prints the error and returns kCallFailed (kNotFound for NOT_FOUND).
int Fail(const grpc::Status& status);
int UsageError(const std::string& message);

// `message` as JSON (proto field names, defaults printed), one line or indented.
std::string ToJson(const google::protobuf::Message& message, bool indent);
// Prints `message` as indented JSON on stdout.
int PrintJson(const google::protobuf::Message& message);

// The bytes of the file at `path`; NOT_FOUND naming it when it cannot be read.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// "k=v,k2=v2" -> labels; INVALID_ARGUMENT for a pair without '='.
absl::StatusOr<std::map<std::string, std::string>> ParseLabels(const std::string& text);

// The commands; `args` are the words after the command name.
int Ingest(const Connection& connection, const std::vector<std::string>& args);

}  // namespace apeserve::apectl

#endif  // APESERVE_TOOLS_APECTL_COMMON_H_
