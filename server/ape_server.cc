#include "server/ape_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cache/context_registry.h"
#include "common/status_macros.h"
#include "model/engine.h"
#include "server/admin_service.h"
#include "server/backend.h"
#include "server/context_service.h"
#include "server/generation_service.h"
#include "server/io_pool.h"
#include "server/metrics_endpoint.h"
#include "server/periodic_task.h"
#include "server/prefix_cache.h"
#include "server/scheduler.h"
#include "server/server_counters.h"
#include "server/tls_credentials.h"
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
  const RequestLimits& limits = options.limits;
  if (limits.max_queued_requests < 1 || limits.max_running_requests < 1 ||
      limits.max_contexts_per_request < 1 || limits.max_new_tokens < 1 ||
      limits.max_query_tokens < 1 || limits.max_context_bytes < 1 ||
      limits.max_context_tokens < 0 || limits.max_continuations < 1 ||
      limits.max_batch_contexts < 1) {
    return absl::InvalidArgumentError(
        "limits: queue, running requests, contexts per request, new tokens, query tokens, "
        "context bytes, continuations and batch size must be at least 1 (context tokens 0 "
        "or more)");
  }
  if (options.batching.max_step_tokens < 1 || options.batching.max_prefill_chunk < 1) {
    return absl::InvalidArgumentError("batching: step tokens and prefill chunk must be at least 1");
  }
  if (!(options.batching.ingest_share >= 0 && options.batching.ingest_share <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("batching: ingest share ",
                                                   options.batching.ingest_share,
                                                   " is not in [0, 1] (--ingest_share)"));
  }
  return absl::OkStatus();
}

absl::string_view ChatFormatName(model::ChatFormat format) {
  switch (format) {
    case model::ChatFormat::kChatMl:
      return "chatml";
    case model::ChatFormat::kLlama3:
      return "llama3";
    case model::ChatFormat::kLlama2:
      return "llama2";
    case model::ChatFormat::kMistral:
      return "mistral";
  }
  return "unknown";
}

ape::v1::ModelInfo DescribeModel(const model::Engine& engine, const model::ChatTemplate& chat,
                                 const StorageOptions& storage) {
  const model::ModelConfig& config = engine.config();
  ape::v1::ModelInfo info;
  info.set_architecture(config.architecture);
  info.set_context_length(config.max_position);
  info.set_vocab_size(config.vocab_size);
  info.set_num_layers(config.num_layers);
  info.set_hidden_size(config.hidden_size);
  info.set_num_heads(config.num_heads);
  info.set_num_kv_heads(config.num_kv_heads);
  info.set_chat_template(std::string(ChatFormatName(chat.format())));
  info.set_fingerprint(engine.fingerprint());
  info.set_dtype(engine.dtype());
  info.set_device(engine.device());
  const int64_t element_bytes = storage.kv_quantization != cache::KvQuantization::kNone ? 1
                                : engine.dtype() == "float32"                           ? 4
                                                                                        : 2;
  info.set_kv_bytes_per_token(2 * config.num_layers * config.num_kv_heads * config.head_dim *
                              element_bytes);
  return info;
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

ape::v1::ServerInfo DescribeServer(const ServerOptions& options,
                                   const model::PreloadCheck& checked) {
  const model::GgufHeader& header = checked.header;
  const model::RuntimeInfo& runtime = checked.runtime;
  ape::v1::ServerInfo info;
  info.set_version(APESERVE_VERSION);
  info.set_torch_version(runtime.torch_version);
  info.set_device(checked.device);
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
  APE_ASSIGN_OR_RETURN(const std::shared_ptr<grpc::ServerCredentials> credentials,
                       MakeServerCredentials(options.tls));
  std::unique_ptr<TokenAuth> auth = std::make_unique<TokenAuth>();
  if (!options.auth_tokens_file.empty()) {
    APE_ASSIGN_OR_RETURN(auth, TokenAuth::Open(options.auth_tokens_file));
    spdlog::info("token authentication on: {} token(s) from '{}'; KV {} across namespaces",
                 auth->size(), options.auth_tokens_file,
                 options.share_kv_across_namespaces ? "shared" : "not shared");
  }
  APE_ASSIGN_OR_RETURN(const model::PreloadCheck checked,
                       model::CheckBeforeLoad(options.model_path, options.device));
  const model::GgufHeader& header = checked.header;
  const model::RuntimeInfo& runtime = checked.runtime;
  spdlog::info("libtorch {} (CUDA backend {}, {} CUDA device(s), {} CPU threads); device {}",
               runtime.torch_version, runtime.cuda_compiled ? "linked" : "absent",
               runtime.cuda_device_count, runtime.intra_op_threads, checked.device);
  spdlog::info("model file '{}': GGUF v{}, {} tensors, {} metadata pairs, {} bytes",
               options.model_path, header.version, header.tensor_count, header.metadata_count,
               header.file_size);

  std::unique_ptr<ApeServer> server(new ApeServer());
  server->options_ = std::make_unique<ServerOptions>(options);
  server->auth_ = std::move(auth);
  const absl::Time load_start = absl::Now();
  model::EngineOptions engine_options;
  engine_options.model_path = options.model_path;
  engine_options.device = options.device;
  engine_options.dtype = options.dtype;
  engine_options.decode_threads = options.batching.decode_threads;
  engine_options.prefill_threads = options.batching.prefill_threads;
  APE_ASSIGN_OR_RETURN(server->engine_, model::Engine::Load(engine_options));
  const model::Engine& engine = *server->engine_;
  APE_ASSIGN_OR_RETURN(const model::ChatTemplate* chat, engine.chat_template());
  spdlog::info(
      "model loaded in {:.1f} s: {}, {} layers, context {} tokens, {} on {}, chat format {}",
      absl::ToDoubleSeconds(absl::Now() - load_start), engine.config().architecture,
      engine.config().num_layers, engine.config().max_position, engine.dtype(), engine.device(),
      std::string(ChatFormatName(chat->format())));
  APE_ASSIGN_OR_RETURN(const model::PromptPieces pieces, engine.prompt_pieces());
  server->pieces_ = std::make_unique<model::PromptPieces>(pieces);
  server->prefixes_ = std::make_unique<PrefixCache>(engine, *server->pieces_);
  // The default prefix is encoded now: most requests use it.
  APE_RETURN_IF_ERROR(server->prefixes_->Get("").status());

  if (!options.ape_calibration_fingerprint.empty() &&
      options.ape_calibration_fingerprint != engine.fingerprint()) {
    spdlog::warn(
        "APE calibration '{}' was made for model {}, not this one ({}): its T and S are "
        "used, but were not tuned for this model",
        options.ape_calibration_file, options.ape_calibration_fingerprint, engine.fingerprint());
  }

  cache::ContextRegistryOptions registry_options;
  registry_options.store.path = options.data_dir;
  registry_options.model_fingerprint = engine.fingerprint();
  registry_options.tokenizer_fingerprint = engine.tokenizer().fingerprint();
  registry_options.sync_writes = options.storage.sync_writes;
  registry_options.kv_quantization = options.storage.kv_quantization;
  registry_options.host_cache_bytes = options.storage.host_cache_bytes;
  registry_options.device_cache_bytes = options.storage.device_cache_bytes;
  registry_options.stored_kv_bytes = options.storage.stored_kv_bytes;
  registry_options.isolate_namespaces =
      !options.auth_tokens_file.empty() && !options.share_kv_across_namespaces;
  PrefixCache& prefixes = *server->prefixes_;
  cache::KvEncoder encoder =
      [&engine, &prefixes](absl::string_view prefix_hash,
                           absl::Span<const int32_t> tokens) -> absl::StatusOr<model::KvSegment> {
    const std::shared_ptr<const model::EncodedPrefix> prefix = prefixes.FindByHash(prefix_hash);
    if (prefix == nullptr) {
      return absl::InternalError(absl::StrCat("no encoded prefix ", prefix_hash));
    }
    APE_ASSIGN_OR_RETURN(model::EncodedContext context, engine.EncodeContext(*prefix, tokens));
    return std::move(context.kv);
  };
  cache::DeviceUploader uploader = nullptr;
  if (engine.device() != "cpu" && options.storage.device_cache_bytes > 0) {
    uploader = [&engine](const model::EncodedContext& host) -> absl::StatusOr<cache::DeviceCopy> {
      APE_ASSIGN_OR_RETURN(model::EncodedContext on_device, engine.ToDevice(host));
      const size_t bytes = on_device.device != nullptr ? on_device.device->bytes() : 0;
      return cache::DeviceCopy{
          .context = std::make_shared<const model::EncodedContext>(std::move(on_device)),
          .bytes = bytes};
    };
  }
  APE_ASSIGN_OR_RETURN(
      server->registry_,
      cache::ContextRegistry::Open(registry_options, std::move(encoder), std::move(uploader)));
  cache::ContextRegistry& registry = *server->registry_;
  // Every second: expired leases, and the KV buffers ended requests left unused.
  server->sweeper_ = std::make_unique<PeriodicTask>(absl::Seconds(1), [&registry, &engine] {
    registry.Sweep();
    engine.ReleaseIdleBuffers();
  });
  server->scheduler_ = std::make_unique<Scheduler>(
      engine,
      SchedulerOptions{.max_queued = static_cast<size_t>(options.limits.max_queued_requests),
                       .max_running = static_cast<size_t>(options.limits.max_running_requests),
                       .max_step_tokens = static_cast<size_t>(options.batching.max_step_tokens),
                       .max_prefill_chunk = static_cast<size_t>(options.batching.max_prefill_chunk),
                       .max_running_kv_bytes = options.batching.max_running_kv_bytes,
                       .ingest_share = options.batching.ingest_share});
  // Two threads: one store read or write waits on the disk while the other goes on.
  server->io_ = std::make_unique<IoPool>(
      IoPool::Options{.threads = 2, .niceness = 10, .on_start = model::KeepTorchOnThisThread});
  server->counters_ = std::make_unique<ServerCounters>();
  server->backend_ = std::make_unique<Backend>(Backend{.options = *server->options_,
                                                       .engine = engine,
                                                       .pieces = *server->pieces_,
                                                       .registry = *server->registry_,
                                                       .prefixes = prefixes,
                                                       .scheduler = *server->scheduler_,
                                                       .io = *server->io_,
                                                       .counters = *server->counters_,
                                                       .auth = *server->auth_});
  ape::v1::ServerInfo info = DescribeServer(options, checked);
  if (!options.metrics_address.empty()) {
    APE_ASSIGN_OR_RETURN(server->metrics_,
                         MetricsEndpoint::Start(options.metrics_address, *server->backend_));
    info.set_metrics_address(server->metrics_->address());
    spdlog::info("metrics on http://{}/metrics", server->metrics_->address());
  }
  server->admin_service_ = std::make_unique<AdminService>(
      std::move(info), DescribeModel(engine, *chat, options.storage), *server->backend_);
  server->context_service_ = std::make_unique<ContextService>(*server->backend_);
  server->generation_service_ = std::make_unique<GenerationService>(*server->backend_);

  // Process-wide switches; setting them again for a second server is harmless.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  // gRPC shares ports (SO_REUSEPORT) by default; a second server on our port must fail
  // loudly rather than take half of the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(server->admin_service_.get());
  builder.RegisterService(server->context_service_.get());
  builder.RegisterService(server->generation_service_.get());
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on '", options.listen_address, "': address invalid or in use",
        options.tls.enabled() ? ", or the TLS key does not match its certificate" : ""));
  }
  server->grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  spdlog::info("apeserve {} serving on port {} ({})", APESERVE_VERSION, server->port_,
               !options.tls.enabled()               ? "plaintext"
               : options.tls.client_ca_file.empty() ? "TLS"
                                                    : "TLS, client certificates required");
  return server;
}

void ApeServer::Shutdown(absl::Duration grace) {
  if (grpc_server_ == nullptr) return;
  if (counters_ != nullptr) counters_->draining = true;
  // Health checks turn NOT_SERVING first, so that balancers stop sending new calls.
  grpc_server_->GetHealthCheckService()->SetServingStatus(false);
  // Running calls may finish within the grace; then gRPC cancels them, and their
  // tasks stop at their next step.
  grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  if (scheduler_ != nullptr) scheduler_->Stop();
}

absl::Status ApeServer::ReloadTokens() {
  if (auth_ == nullptr || !auth_->enabled()) return absl::OkStatus();
  if (absl::Status reloaded = auth_->Reload(); !reloaded.ok()) {
    spdlog::error("tokens not reloaded (the previous ones stay in force): {}", reloaded.ToString());
    return reloaded;
  }
  spdlog::info("tokens reloaded: {} in force", auth_->size());
  return absl::OkStatus();
}

void ApeServer::Wait() {
  if (grpc_server_ != nullptr) grpc_server_->Wait();
}

ApeServer::~ApeServer() { Shutdown(absl::ZeroDuration()); }

}  // namespace apeserve::server
