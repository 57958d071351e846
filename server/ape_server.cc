#include "server/ape_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cache/store.h"
#include "common/status_macros.h"
#include "model/engine.h"
#include "model/gguf_header.h"
#include "model/runtime.h"
#include "server/admin_service.h"
#include "spdlog/spdlog.h"

#ifndef APESERVE_VERSION
#error "APESERVE_VERSION must be defined by the build"
#endif

namespace apeserve::server {
namespace {

absl::Status Validate(const ServerOptions& options) {
  if (options.model_path.empty()) {
    return absl::InvalidArgumentError("model_path is empty: name a GGUF model file");
  }
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("data_dir is empty: name the folder of the store");
  }
  if (options.listen_address.empty()) {
    return absl::InvalidArgumentError("listen_address is empty: give host:port");
  }
  if (options.max_receive_message_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_receive_message_bytes is ",
                                                   options.max_receive_message_bytes,
                                                   "; it must be positive"));
  }
  if (absl::Status valid = options.ape_defaults.Validate(); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("ape_defaults: ", valid.message()));
  }
  return absl::OkStatus();
}

ape::v1::ApeScaleForm ToProto(model::ApeScaleForm form) {
  switch (form) {
    case model::ApeScaleForm::kMultiplicative:
      return ape::v1::APE_SCALE_FORM_MULTIPLICATIVE;
    case model::ApeScaleForm::kAdditive:
      return ape::v1::APE_SCALE_FORM_ADDITIVE;
  }
  return ape::v1::APE_SCALE_FORM_UNSPECIFIED;
}

ape::v1::ServerInfo DescribeServer(const ServerOptions& options, const model::GgufHeader& header,
                                   const model::Device& device, const model::RuntimeInfo& runtime) {
  ape::v1::ServerInfo info;
  info.set_version(APESERVE_VERSION);
  info.set_torch_version(runtime.torch_version);
  info.set_device(device.ToString());
  info.set_cuda_available(runtime.cuda_available);
  info.set_data_dir(options.data_dir);
  info.set_start_time_unix_ms(absl::ToUnixMillis(absl::Now()));
  info.mutable_ape_defaults()->set_temperature(options.ape_defaults.temperature);
  info.mutable_ape_defaults()->set_scale(options.ape_defaults.scale);
  info.mutable_ape_defaults()->set_form(ToProto(options.ape_defaults.form));
  info.mutable_ape_defaults()->set_calibration_file(options.ape_calibration_file);
  ape::v1::ModelFile* model = info.mutable_model();
  model->set_path(options.model_path);
  model->set_size_bytes(header.file_size);
  model->set_format("gguf");
  model->set_format_version(header.version);
  model->set_tensor_count(header.tensor_count);
  model->set_metadata_count(header.metadata_count);
  return info;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ApeServer>> ApeServer::Start(const ServerOptions& options) {
  APE_RETURN_IF_ERROR(Validate(options));

  // Cheap checks first, so that a typo fails in milliseconds.
  APE_ASSIGN_OR_RETURN(const model::GgufHeader header, model::ReadGgufHeader(options.model_path));
  APE_ASSIGN_OR_RETURN(const model::Device device, model::ResolveDevice(options.device));
  const model::RuntimeInfo runtime = model::GetRuntimeInfo();
  spdlog::info("libtorch {} (CUDA backend {}, {} CUDA device(s), {} CPU threads); device {}",
               runtime.torch_version, runtime.cuda_compiled ? "linked" : "absent",
               runtime.cuda_device_count, runtime.intra_op_threads, device.ToString());
  APE_RETURN_IF_ERROR(model::SelfTest(device));
  spdlog::info("model file '{}': GGUF v{}, {} tensors, {} metadata pairs, {} bytes",
               options.model_path, header.version, header.tensor_count, header.metadata_count,
               header.file_size);

  if (!options.ape_calibration_fingerprint.empty()) {
    // Hashing the weights costs a read of the file (~0.1 s for the embedded model).
    APE_ASSIGN_OR_RETURN(const std::string fingerprint,
                         model::Engine::ModelFingerprint(options.model_path));
    if (fingerprint != options.ape_calibration_fingerprint) {
      spdlog::warn(
          "APE calibration '{}' was made for model {}, not this one ({}): its T and S are "
          "used, but were not tuned for this model",
          options.ape_calibration_file, options.ape_calibration_fingerprint, fingerprint);
    }
  }

  std::unique_ptr<ApeServer> server(new ApeServer());
  APE_ASSIGN_OR_RETURN(server->store_, cache::Store::Open({.path = options.data_dir}));
  server->admin_service_ =
      std::make_unique<AdminService>(DescribeServer(options, header, device, runtime));

  // Process-wide switches; setting them again for a second server is harmless.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(),
                           &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  // gRPC shares ports (SO_REUSEPORT) by default; a second server on our port must fail
  // loudly rather than take half of the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(server->admin_service_.get());
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", options.listen_address, "': address invalid or in use"));
  }
  server->grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  spdlog::info("apeserve {} serving on port {}", APESERVE_VERSION, server->port_);
  return server;
}

void ApeServer::Shutdown(absl::Duration grace) {
  if (grpc_server_ == nullptr) return;
  // Health checks turn NOT_SERVING first, so that balancers stop sending new calls.
  grpc_server_->GetHealthCheckService()->SetServingStatus(false);
  grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
}

void ApeServer::Wait() {
  if (grpc_server_ != nullptr) grpc_server_->Wait();
}

ApeServer::~ApeServer() { Shutdown(absl::ZeroDuration()); }

}  // namespace apeserve::server
