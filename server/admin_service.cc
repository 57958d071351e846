#include "server/admin_service.h"

namespace apeserve::server {

grpc::ServerUnaryReactor* AdminService::GetServerInfo(
    grpc::CallbackServerContext* context, const ape::v1::GetServerInfoRequest* /*request*/,
    ape::v1::ServerInfo* response) {
  *response = info_;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace apeserve::server
