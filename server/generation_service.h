// ape.v1.GenerationService: Generate, GenerateStream and Score. Each call is checked,
// handed to the scheduler as a task, and its replies are relayed as the task sends
// them; the handler never runs the model itself.
// Thread-safety: calls may run concurrently.
#ifndef APESERVE_SERVER_GENERATION_SERVICE_H_
#define APESERVE_SERVER_GENERATION_SERVICE_H_

#include "ape/v1/generation.grpc.pb.h"
#include "server/backend.h"

namespace apeserve::server {

class GenerationService final : public ape::v1::GenerationService::Service {
 public:
  explicit GenerationService(const Backend& backend) : backend_(backend) {}

  grpc::Status Generate(grpc::ServerContext* context, const ape::v1::GenerateRequest* request,
                        ape::v1::GenerateResponse* response) override;
  grpc::Status GenerateStream(grpc::ServerContext* context, const ape::v1::GenerateRequest* request,
                              grpc::ServerWriter<ape::v1::GenerateStreamResponse>* writer) override;
  grpc::Status Score(grpc::ServerContext* context, const ape::v1::ScoreRequest* request,
                     ape::v1::ScoreResponse* response) override;

 private:
  const Backend& backend_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_GENERATION_SERVICE_H_
