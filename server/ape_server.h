// One running apeserve: checks the model file and the device, loads the model, opens
// the context registry, starts the scheduler, and serves the gRPC services
// (ContextService, GenerationService, AdminService) with health checking and
// reflection on.
//
// Thread-safety: port() anytime; Shutdown() and Wait() from any one thread each.
#ifndef APESERVE_SERVER_APE_SERVER_H_
#define APESERVE_SERVER_APE_SERVER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/server_options.h"
#include "server/token_auth.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace apeserve::cache {
class ContextRegistry;
}  // namespace apeserve::cache

namespace apeserve::model {
class Engine;
class PromptPieces;
}  // namespace apeserve::model

namespace apeserve::server {

class AdminService;
class ContextService;
class GenerationService;
class MetricsEndpoint;
class PeriodicTask;
class PrefixCache;
class IoPool;
class Scheduler;
class ServerCounters;
struct Backend;

class ApeServer {
 public:
  // Starts a server; it serves until Shutdown() or destruction.
  // INVALID_ARGUMENT: a required option is missing or the model file is malformed.
  // NOT_FOUND / PERMISSION_DENIED: the model file cannot be read.
  // FAILED_PRECONDITION: the device does not exist, the data directory belongs to
  // another schema, or the model has no chat template apeserve knows. UNAVAILABLE: the address
  // cannot be bound, the store is locked by another process, or the device failed its self-test.
  static absl::StatusOr<std::unique_ptr<ApeServer>> Start(const ServerOptions& options);

  ApeServer(const ApeServer&) = delete;
  ApeServer& operator=(const ApeServer&) = delete;
  ~ApeServer();  // Shutdown() with no grace.

  // The port the server listens on (the one picked when the address asked for 0).
  int port() const { return port_; }

  // Reports NOT_SERVING to health checks, stops taking calls, cancels the calls still
  // running after `grace`, and stops the scheduler. Idempotent.
  void Shutdown(absl::Duration grace);

  // Blocks until the server has shut down.
  void Wait();

  // Reads the tokens file again (SIGHUP); on an error the tokens in force stay.
  absl::Status ReloadTokens();

 private:
  ApeServer() = default;

  int port_ = 0;
  // Destroyed in reverse order: the gRPC server before the services it calls, those
  // before the scheduler whose tasks use the registry, and the registry before the
  // engine its encoder calls.
  std::unique_ptr<model::Engine> engine_;
  std::unique_ptr<model::PromptPieces> pieces_;
  std::unique_ptr<PrefixCache> prefixes_;
  std::unique_ptr<cache::ContextRegistry> registry_;
  std::unique_ptr<PeriodicTask> sweeper_;  // the registry's Sweep and idle KV buffers, each second
  std::unique_ptr<Scheduler> scheduler_;
  // After the scheduler: its jobs end (and wake their tasks) before it goes.
  std::unique_ptr<IoPool> io_;
  std::unique_ptr<ServerCounters> counters_;
  std::unique_ptr<ServerOptions> options_;
  std::unique_ptr<TokenAuth> auth_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<MetricsEndpoint> metrics_;
  std::unique_ptr<AdminService> admin_service_;
  std::unique_ptr<ContextService> context_service_;
  std::unique_ptr<GenerationService> generation_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_APE_SERVER_H_
