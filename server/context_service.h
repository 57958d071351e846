// ape.v1.ContextService: storing, listing, reading, relabelling and deleting contexts.
// Stores go through the scheduler (they run the model to encode KV); reads, updates
// and deletes go to the registry on the I/O pool. gRPC's callback API: no call holds
// a thread while it waits.
// Thread-safety: calls may run concurrently.
#ifndef APESERVE_SERVER_CONTEXT_SERVICE_H_
#define APESERVE_SERVER_CONTEXT_SERVICE_H_

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ape/v1/context.grpc.pb.h"
#include "server/backend.h"

namespace apeserve::server {

class ContextService final : public ape::v1::ContextService::CallbackService {
 public:
  explicit ContextService(const Backend& backend) : backend_(backend) {}

  grpc::ServerUnaryReactor* CreateContext(grpc::CallbackServerContext* context,
                                          const ape::v1::CreateContextRequest* request,
                                          ape::v1::Context* response) override;
  grpc::ServerReadReactor<ape::v1::UploadContextRequest>* UploadContext(
      grpc::CallbackServerContext* context, ape::v1::Context* response) override;
  grpc::ServerWriteReactor<ape::v1::BatchCreateContextsResponse>* BatchCreateContexts(
      grpc::CallbackServerContext* context,
      const ape::v1::BatchCreateContextsRequest* request) override;
  grpc::ServerUnaryReactor* GetContext(grpc::CallbackServerContext* context,
                                       const ape::v1::GetContextRequest* request,
                                       ape::v1::Context* response) override;
  grpc::ServerUnaryReactor* ListContexts(grpc::CallbackServerContext* context,
                                         const ape::v1::ListContextsRequest* request,
                                         ape::v1::ListContextsResponse* response) override;
  grpc::ServerUnaryReactor* UpdateContext(grpc::CallbackServerContext* context,
                                          const ape::v1::UpdateContextRequest* request,
                                          ape::v1::Context* response) override;
  grpc::ServerUnaryReactor* DeleteContext(grpc::CallbackServerContext* context,
                                          const ape::v1::DeleteContextRequest* request,
                                          ape::v1::DeleteContextResponse* response) override;

 private:
  class Upload;

  // Stores `request` through the scheduler and finishes `reactor` (a unary call, or an
  // upload that read its text) with the stored context in `response`, or the error.
  template <typename Reactor>
  void StoreOne(Reactor* reactor, grpc::CallbackServerContext* context,
                ape::v1::CreateContextRequest request, ape::v1::Context* response,
                absl::string_view method, absl::Time start);
  // Runs `work` on the I/O pool and finishes the call with its status.
  grpc::ServerUnaryReactor* OnIoPool(grpc::CallbackServerContext* context,
                                     std::function<grpc::Status()> work);

  // The unary calls' work, run on the I/O pool (each reads or writes RocksDB).
  grpc::Status Get(const grpc::ServerContextBase* context,
                   const ape::v1::GetContextRequest* request, ape::v1::Context* response);
  grpc::Status List(const grpc::ServerContextBase* context,
                    const ape::v1::ListContextsRequest* request,
                    ape::v1::ListContextsResponse* response);
  grpc::Status Update(const grpc::ServerContextBase* context,
                      const ape::v1::UpdateContextRequest* request, ape::v1::Context* response);
  grpc::Status Delete(const grpc::ServerContextBase* context,
                      const ape::v1::DeleteContextRequest* request,
                      ape::v1::DeleteContextResponse* response);
  // Whether `document`'s KV after the default prefix is stored.
  bool KvStored(const cache::StoredContext& document) const;

  const Backend& backend_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_CONTEXT_SERVICE_H_
