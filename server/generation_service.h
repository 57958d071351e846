// ape.v1.GenerationService: Generate, GenerateStream and Score. Each call is checked,
// handed to the scheduler as a task, and its replies are relayed as the task sends
// them (gRPC's callback API: a call waiting for its task holds no thread); the
// handler never runs the model itself.
// Thread-safety: calls may run concurrently.
#ifndef APESERVE_SERVER_GENERATION_SERVICE_H_
#define APESERVE_SERVER_GENERATION_SERVICE_H_

#include "ape/v1/generation.grpc.pb.h"
#include "server/backend.h"

namespace apeserve::server {

class GenerationService final : public ape::v1::GenerationService::CallbackService {
 public:
  explicit GenerationService(const Backend& backend) : backend_(backend) {}

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const ape::v1::GenerateRequest* request,
                                     ape::v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<ape::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const ape::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const ape::v1::ScoreRequest* request,
                                  ape::v1::ScoreResponse* response) override;

 private:
  const Backend& backend_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_GENERATION_SERVICE_H_
