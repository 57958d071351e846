// ape.v1.ContextService: storing, listing, reading, relabelling and deleting contexts.
// Stores go through the scheduler (they run the model to encode KV); reads, updates
// and deletes go straight to the registry.
// Thread-safety: calls may run concurrently.
#ifndef APESERVE_SERVER_CONTEXT_SERVICE_H_
#define APESERVE_SERVER_CONTEXT_SERVICE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "ape/v1/context.grpc.pb.h"
#include "server/backend.h"

namespace apeserve::server {

class ContextService final : public ape::v1::ContextService::Service {
 public:
  explicit ContextService(const Backend& backend) : backend_(backend) {}

  grpc::Status CreateContext(grpc::ServerContext* context,
                             const ape::v1::CreateContextRequest* request,
                             ape::v1::Context* response) override;
  grpc::Status UploadContext(grpc::ServerContext* context,
                             grpc::ServerReader<ape::v1::UploadContextRequest>* reader,
                             ape::v1::Context* response) override;
  grpc::Status BatchCreateContexts(
      grpc::ServerContext* context, const ape::v1::BatchCreateContextsRequest* request,
      grpc::ServerWriter<ape::v1::BatchCreateContextsResponse>* writer) override;
  grpc::Status GetContext(grpc::ServerContext* context, const ape::v1::GetContextRequest* request,
                          ape::v1::Context* response) override;
  grpc::Status ListContexts(grpc::ServerContext* context,
                            const ape::v1::ListContextsRequest* request,
                            ape::v1::ListContextsResponse* response) override;
  grpc::Status UpdateContext(grpc::ServerContext* context,
                             const ape::v1::UpdateContextRequest* request,
                             ape::v1::Context* response) override;
  grpc::Status DeleteContext(grpc::ServerContext* context,
                             const ape::v1::DeleteContextRequest* request,
                             ape::v1::DeleteContextResponse* response) override;

 private:
  // Stores one context through the scheduler and waits for it.
  absl::StatusOr<ape::v1::Context> StoreOne(grpc::ServerContext* context,
                                            ape::v1::CreateContextRequest request);
  // Whether `document`'s KV after the default prefix is stored.
  bool KvStored(const cache::StoredContext& document) const;

  const Backend& backend_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_CONTEXT_SERVICE_H_
