// One running apeserve: checks the model file and the device, opens the store, and
// serves the gRPC services with health checking and reflection on.
//
// Thread-safety: port() anytime; Shutdown() and Wait() from any one thread each.
#ifndef APESERVE_SERVER_APE_SERVER_H_
#define APESERVE_SERVER_APE_SERVER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/server_options.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace apeserve::cache {
class Store;
}  // namespace apeserve::cache

namespace apeserve::server {

class AdminService;

class ApeServer {
 public:
  // Starts a server; it serves until Shutdown() or destruction.
  // INVALID_ARGUMENT: a required option is missing or the model file is malformed.
  // NOT_FOUND / PERMISSION_DENIED: the model file cannot be read.
  // FAILED_PRECONDITION: the device does not exist or the data directory belongs to
  // another schema. UNAVAILABLE: the address cannot be bound, the store is locked by
  // another process, or the device failed its self-test.
  static absl::StatusOr<std::unique_ptr<ApeServer>> Start(const ServerOptions& options);

  ApeServer(const ApeServer&) = delete;
  ApeServer& operator=(const ApeServer&) = delete;
  ~ApeServer();  // Shutdown() with no grace.

  // The port the server listens on (the one picked when the address asked for 0).
  int port() const { return port_; }

  // Reports NOT_SERVING to health checks, stops taking calls, and cancels the calls
  // still running after `grace`. Idempotent.
  void Shutdown(absl::Duration grace);

  // Blocks until the server has shut down.
  void Wait();

 private:
  ApeServer() = default;

  int port_ = 0;
  // Destroyed in reverse order: the gRPC server before the services it calls, and
  // those before the store they use.
  std::unique_ptr<cache::Store> store_;
  std::unique_ptr<AdminService> admin_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_APE_SERVER_H_
