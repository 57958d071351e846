// ape.v1.AdminService: what this server is and runs, what it has done, how busy it is.
// Thread-safety: calls may run concurrently; each answers at once from counters.
#ifndef APESERVE_SERVER_ADMIN_SERVICE_H_
#define APESERVE_SERVER_ADMIN_SERVICE_H_

#include <utility>

#include "ape/v1/admin.grpc.pb.h"
#include "server/backend.h"

namespace apeserve::server {

class AdminService final : public ape::v1::AdminService::CallbackService {
 public:
  // `info` and `model` are fixed at start; `backend` gives the live figures.
  AdminService(ape::v1::ServerInfo info, ape::v1::ModelInfo model, const Backend& backend)
      : info_(std::move(info)), model_(std::move(model)), backend_(backend) {}

  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const ape::v1::GetServerInfoRequest* request,
                                          ape::v1::ServerInfo* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const ape::v1::GetModelInfoRequest* request,
                                         ape::v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const ape::v1::GetStatsRequest* request,
                                     ape::v1::Stats* response) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context,
                                    const ape::v1::GetLoadRequest* request,
                                    ape::v1::Load* response) override;

 private:
  const ape::v1::ServerInfo info_;
  const ape::v1::ModelInfo model_;
  const Backend& backend_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_ADMIN_SERVICE_H_
