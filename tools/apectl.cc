// apectl: the command-line client of apeserve.
//
//   apectl [--target=HOST:PORT] [--timeout=5s] info     server, runtime and model, as JSON
//   apectl [--target=HOST:PORT] [--timeout=5s] health   SERVING or NOT_SERVING
//
// Exit status: 0 success, 1 the call failed, 2 bad usage, 3 the server is not serving.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "ape/v1/admin.grpc.pb.h"
#include "google/protobuf/util/json_util.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "address of the apeserve to talk to");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(5), "deadline of each call");

namespace {

constexpr char kUsage[] =
    "apectl: command-line client of apeserve.\n\n"
    "Usage: apectl [--target=HOST:PORT] [--timeout=DURATION] COMMAND\n"
    "Commands:\n"
    "  info     print the server's version, runtime and model as JSON\n"
    "  health   print SERVING or NOT_SERVING (grpc.health.v1)";

int Fail(const grpc::Status& status) {
  std::fprintf(stderr, "apectl: %s (gRPC code %d)\n", status.error_message().c_str(),
               static_cast<int>(status.error_code()));
  return 1;
}

void SetDeadline(grpc::ClientContext& context) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
}

int Info(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = ape::v1::AdminService::NewStub(channel);
  grpc::ClientContext context;
  SetDeadline(context);
  ape::v1::ServerInfo info;
  const grpc::Status status = stub->GetServerInfo(&context, ape::v1::GetServerInfoRequest(), &info);
  if (!status.ok()) return Fail(status);
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  if (!google::protobuf::util::MessageToJsonString(info, &json, options).ok()) {
    std::fprintf(stderr, "apectl: cannot print the reply as JSON\n");
    return 1;
  }
  std::fputs(json.c_str(), stdout);
  return 0;
}

// grpc.health.v1.Health/Check through the generic stub: gRPC ships no C++ stubs for
// it. The request {service: ""} encodes to zero bytes; the reply is field 1, a varint.
int Health(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  SetDeadline(context);
  grpc::Slice empty_message;
  grpc::ByteBuffer request(&empty_message, 1), reply;
  grpc::Status status;
  absl::Notification done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &reply,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) return Fail(status);

  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (reply.Dump(&slices).ok()) {
    for (const grpc::Slice& slice : slices) {
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
  }
  // Field 1, wire type 0 (tag 0x08), then a one-byte enum; proto3 leaves out the
  // default, UNKNOWN (0).
  int serving_status = 0;
  const auto byte = [&bytes](size_t i) { return static_cast<unsigned char>(bytes[i]); };
  if (bytes.size() == 2 && byte(0) == 0x08 && byte(1) <= 3) {
    serving_status = byte(1);
  } else if (!bytes.empty()) {
    std::fprintf(stderr, "apectl: unreadable health reply of %zu bytes\n", bytes.size());
    return 1;
  }
  static constexpr const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  std::puts(kNames[serving_status]);
  return serving_status == 1 ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "%s\n", kUsage);
    return 2;
  }
  const std::string command = args[1];
  auto channel =
      grpc::CreateChannel(absl::GetFlag(FLAGS_target), grpc::InsecureChannelCredentials());
  if (command == "info") return Info(channel);
  if (command == "health") return Health(channel);
  std::fprintf(stderr, "apectl: unknown command '%s'\n\n%s\n", command.c_str(), kUsage);
  return 2;
}
