// ape.v1.AdminService: what this server is and runs on.
// Thread-safety: the service holds only immutable state; calls may run concurrently.
#ifndef APESERVE_SERVER_ADMIN_SERVICE_H_
#define APESERVE_SERVER_ADMIN_SERVICE_H_

#include <utility>

#include "ape/v1/admin.grpc.pb.h"

namespace apeserve::server {

class AdminService final : public ape::v1::AdminService::CallbackService {
 public:
  // `info` is fixed at start; every GetServerInfo returns it.
  explicit AdminService(ape::v1::ServerInfo info) : info_(std::move(info)) {}

  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const ape::v1::GetServerInfoRequest* request,
                                          ape::v1::ServerInfo* response) override;

 private:
  const ape::v1::ServerInfo info_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_ADMIN_SERVICE_H_
