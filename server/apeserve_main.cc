// apeserve: the gRPC inference server. Flags become ServerOptions here and nowhere else.
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <tuple>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cache/kv_quantization.h"
#include "common/logging.h"
#include "model/ape_options.h"
#include "server/allocator.h"
#include "server/ape_server.h"
#include "server/log_format.h"
#include "server/server_options.h"
#include "spdlog/spdlog.h"

namespace {
const apeserve::server::ServerOptions kDefaults;
}  // namespace

#ifndef APESERVE_DEFAULT_MODEL
#error "APESERVE_DEFAULT_MODEL must be defined by the build"
#endif

ABSL_FLAG(std::string, listen, kDefaults.listen_address,
          "host:port to serve on; port 0 picks a free one (see --port_file)");
ABSL_FLAG(std::string, model, APESERVE_DEFAULT_MODEL,
          "GGUF model file (default: the embedded SmolLM2-135M-Instruct, where "
          "deploy/setup.sh placed it)");
ABSL_FLAG(std::string, data_dir, APESERVE_DEFAULT_DATA_DIR,
          "folder of the context and KV store; created when missing");
ABSL_FLAG(std::string, device, kDefaults.device, "compute device: auto, cpu, cuda or cuda:N");
ABSL_FLAG(
    std::string, dtype, kDefaults.dtype,
    "compute dtype: auto (float32 on the CPU, bfloat16 on a GPU), float32, bfloat16, float16");
// Storage of contexts and their KV.
ABSL_FLAG(int64_t, host_cache_mib, kDefaults.storage.host_cache_bytes >> 20,
          "MiB of decoded KV kept in host memory (the host tier)");
ABSL_FLAG(int64_t, device_cache_mib, kDefaults.storage.device_cache_bytes >> 20,
          "MiB of KV kept in GPU memory (the device tier; CUDA only, 0 is off)");
ABSL_FLAG(int64_t, stored_kv_mib, kDefaults.storage.stored_kv_bytes >> 20,
          "MiB of KV kept in the store on disk, least recently used evicted first (0: no "
          "limit); contexts themselves are never evicted, their KV is rebuilt when needed");
ABSL_FLAG(bool, sync_writes, kDefaults.storage.sync_writes,
          "fsync every stored context before acknowledging it (false: survives a crash of "
          "the process but not of the machine; faster ingestion)");
ABSL_FLAG(std::string, kv_storage, "none",
          "how new KV is stored: none (as computed), int8_per_channel or int8_per_token "
          "(a quarter of float32's bytes)");
// What one request may ask for.
ABSL_FLAG(int64_t, max_context_bytes, static_cast<int64_t>(kDefaults.limits.max_context_bytes),
          "bytes of one context's text");
ABSL_FLAG(int64_t, max_context_tokens, kDefaults.limits.max_context_tokens,
          "tokens of one context (0: what fits the model's window)");
ABSL_FLAG(int, max_contexts_per_request, kDefaults.limits.max_contexts_per_request,
          "contexts one Generate or Score request may name");
ABSL_FLAG(int64_t, max_query_tokens, kDefaults.limits.max_query_tokens, "tokens of one query");
ABSL_FLAG(int, max_new_tokens, kDefaults.limits.max_new_tokens, "tokens one request may generate");
ABSL_FLAG(int, max_continuations, kDefaults.limits.max_continuations,
          "continuations one Score request may carry");
ABSL_FLAG(int, max_batch_contexts, kDefaults.limits.max_batch_contexts,
          "contexts one BatchCreateContexts call may carry");
ABSL_FLAG(int, max_queued_requests, kDefaults.limits.max_queued_requests,
          "requests waiting for the engine; more are refused with RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_running_requests, kDefaults.limits.max_running_requests,
          "requests the engine works on at once, their steps batched (1: one after another)");
ABSL_FLAG(int, max_step_tokens, kDefaults.batching.max_step_tokens,
          "tokens one batched step feeds while requests decode: their next tokens, then "
          "chunks of new prompts (bounds how long a prompt delays the streams)");
ABSL_FLAG(int, decode_threads, kDefaults.batching.decode_threads,
          "CPU threads of a decoding step (0: the cores less one, at least 1; decoding is "
          "bound by memory, and a free core serves the RPCs)");
ABSL_FLAG(int, prefill_threads, kDefaults.batching.prefill_threads,
          "CPU threads of prompt work: prefill and encoding contexts (0: all cores)");
ABSL_FLAG(int, max_prefill_chunk, kDefaults.batching.max_prefill_chunk,
          "tokens of a prompt chunk while no request decodes");
ABSL_FLAG(double, ingest_share, kDefaults.batching.ingest_share,
          "share of a step's prompt tokens for documents being ingested, 0 to 1: the most "
          "they take while answers stream, the least they get when queries' prompts want "
          "tokens too");
ABSL_FLAG(int64_t, max_running_kv_mib,
          static_cast<int64_t>(kDefaults.batching.max_running_kv_bytes >> 20),
          "MiB of KV the running requests may hold in all; more wait their turn (0: no limit)");
ABSL_FLAG(std::string, ape_calibration, "",
          "take APE's defaults (T, S, form) from this file, written by `apeeval calibrate`; "
          "the three flags below override single values");
ABSL_FLAG(std::optional<float>, ape_temperature, std::nullopt,
          "APE attention temperature T for requests that leave it unset, in (0, 4] "
          "(default: the calibration's, else 0.9)");
ABSL_FLAG(std::optional<float>, ape_scale, std::nullopt,
          "APE scaling factor S for requests that leave it unset, in (0, 16] "
          "(default: the calibration's, else 0.9)");
ABSL_FLAG(std::optional<std::string>, ape_form, std::nullopt,
          "how S enters APE for requests that leave it unset: multiplicative (published, "
          "S*T*lse) or additive (T*lse + ln S) (default: the calibration's, else multiplicative)");
ABSL_FLAG(std::string, port_file, "",
          "once serving, write the port to this file (for scripts and tests)");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error or off");
ABSL_FLAG(std::string, log_format, "text",
          "text (human-readable lines) or json (one JSON object per line, for log collectors)");
ABSL_FLAG(std::string, metrics_listen, kDefaults.metrics_address,
          "host:port of the Prometheus metrics endpoint (GET /metrics); empty turns it off");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the gRPC port; with --tls_key, the port speaks TLS only");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificates: clients must present a certificate they signed (mutual TLS)");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "JSON file of the tokens that may call the API (SHA-256 digests, roles, namespaces); "
          "reloaded on SIGHUP; empty: no authentication");
ABSL_FLAG(bool, share_kv_across_namespaces, false,
          "with --auth_tokens_file, let equal documents in different namespaces share one KV "
          "(faster ingest, less space; a tenant can then tell by timing whether another "
          "stored a text); without authentication KV is always shared");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "on SIGTERM or SIGINT, how long running calls may finish before they are cancelled");

namespace {

constexpr char kUsage[] =
    "apeserve: gRPC server for retrieval-augmented generation and in-context learning\n"
    "with pre-encoded contexts (Adaptive Parallel Encoding).\n\n"
    "Usage: apeserve [--model=FILE.gguf] [--data_dir=DIR] [--listen=HOST:PORT] [flags]\n"
    "Try --help for every flag.";

// Writes `port` to `path` through a temporary file, so a reader never sees half of it.
bool WritePortFile(const std::string& path, int port) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    if (!out.flush()) return false;
  }
  std::error_code error;
  std::filesystem::rename(tmp, path, error);
  return !error;
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "apeserve: %s\n\n%s\n", message.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  absl::ParseCommandLine(argc, argv);

  apeserve::LogToStderr();
  const spdlog::level::level_enum level = spdlog::level::from_str(absl::GetFlag(FLAGS_log_level));
  if (level == spdlog::level::off && absl::GetFlag(FLAGS_log_level) != "off") {
    return UsageError(absl::StrCat("--log_level='", absl::GetFlag(FLAGS_log_level),
                                   "' is not one of trace, debug, info, warn, error, off"));
  }
  spdlog::set_level(level);
  if (absl::Status format = apeserve::server::SetLogFormat(absl::GetFlag(FLAGS_log_format));
      !format.ok()) {
    return UsageError(absl::StrCat("--log_format: ", format.message()));
  }
  spdlog::info("allocator: {}", apeserve::server::AllocatorDescription());

  apeserve::server::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.model_path = absl::GetFlag(FLAGS_model);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.device = absl::GetFlag(FLAGS_device);
  options.dtype = absl::GetFlag(FLAGS_dtype);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  options.tls = {.cert_file = absl::GetFlag(FLAGS_tls_cert),
                 .key_file = absl::GetFlag(FLAGS_tls_key),
                 .client_ca_file = absl::GetFlag(FLAGS_tls_client_ca)};
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  options.share_kv_across_namespaces = absl::GetFlag(FLAGS_share_kv_across_namespaces);
  // Sizes in MiB, from 0 to 1 TiB.
  const auto mib = [](int64_t value) -> std::optional<size_t> {
    if (value < 0 || value > (int64_t{1} << 20)) return std::nullopt;
    return static_cast<size_t>(value) << 20;
  };
  for (const auto& [name, value, target] :
       {std::tuple<const char*, int64_t, size_t*>{"--host_cache_mib",
                                                  absl::GetFlag(FLAGS_host_cache_mib),
                                                  &options.storage.host_cache_bytes},
        {"--device_cache_mib", absl::GetFlag(FLAGS_device_cache_mib),
         &options.storage.device_cache_bytes},
        {"--stored_kv_mib", absl::GetFlag(FLAGS_stored_kv_mib),
         &options.storage.stored_kv_bytes}}) {
    const std::optional<size_t> bytes = mib(value);
    if (!bytes.has_value()) return UsageError(absl::StrCat(name, "=", value, " is not a size"));
    *target = *bytes;
  }
  options.storage.sync_writes = absl::GetFlag(FLAGS_sync_writes);
  if (auto quantization = apeserve::cache::ParseKvQuantization(absl::GetFlag(FLAGS_kv_storage));
      quantization.ok()) {
    options.storage.kv_quantization = *quantization;
  } else {
    return UsageError(absl::StrCat("--kv_storage: ", quantization.status().message()));
  }
  apeserve::server::RequestLimits& limits = options.limits;
  if (absl::GetFlag(FLAGS_max_context_bytes) < 1)
    return UsageError("--max_context_bytes must be positive");
  limits.max_context_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_context_bytes));
  limits.max_context_tokens = absl::GetFlag(FLAGS_max_context_tokens);
  limits.max_contexts_per_request = absl::GetFlag(FLAGS_max_contexts_per_request);
  limits.max_query_tokens = absl::GetFlag(FLAGS_max_query_tokens);
  limits.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  limits.max_continuations = absl::GetFlag(FLAGS_max_continuations);
  limits.max_batch_contexts = absl::GetFlag(FLAGS_max_batch_contexts);
  limits.max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests);
  limits.max_running_requests = absl::GetFlag(FLAGS_max_running_requests);
  options.batching.max_step_tokens = absl::GetFlag(FLAGS_max_step_tokens);
  options.batching.max_prefill_chunk = absl::GetFlag(FLAGS_max_prefill_chunk);
  options.batching.ingest_share = absl::GetFlag(FLAGS_ingest_share);
  options.batching.decode_threads = absl::GetFlag(FLAGS_decode_threads);
  options.batching.prefill_threads = absl::GetFlag(FLAGS_prefill_threads);
  if (absl::GetFlag(FLAGS_max_running_kv_mib) < 0) {
    return UsageError("--max_running_kv_mib must be 0 (no limit) or more");
  }
  options.batching.max_running_kv_bytes =
      static_cast<size_t>(absl::GetFlag(FLAGS_max_running_kv_mib)) << 20;
  if (options.model_path.empty()) return UsageError("--model is empty: name a GGUF model file");
  if (options.data_dir.empty()) return UsageError("--data_dir is empty: name a folder");
  // APE's defaults: built in, then the calibration file, then single flags.
  if (const std::string path = absl::GetFlag(FLAGS_ape_calibration); !path.empty()) {
    auto calibration = apeserve::model::ReadApeCalibration(path);
    if (!calibration.ok()) {
      return UsageError(
          absl::StrCat("--ape_calibration='", path, "': ", calibration.status().message()));
    }
    options.ape_defaults = calibration->options;
    options.ape_calibration_file = path;
    options.ape_calibration_fingerprint = calibration->model_fingerprint;
  }
  if (const auto temperature = absl::GetFlag(FLAGS_ape_temperature)) {
    options.ape_defaults.temperature = *temperature;
  }
  if (const auto scale = absl::GetFlag(FLAGS_ape_scale)) options.ape_defaults.scale = *scale;
  if (const auto name = absl::GetFlag(FLAGS_ape_form)) {
    const auto form = apeserve::model::ParseApeScaleForm(*name);
    if (!form.ok()) return UsageError(absl::StrCat("--ape_form: ", form.status().message()));
    options.ape_defaults.form = *form;
  }
  if (absl::Status valid = options.ape_defaults.Validate(); !valid.ok()) {
    return UsageError(absl::StrCat("APE defaults: ", valid.message()));
  }

  // Block the signals before any thread starts, so that every thread inherits the mask
  // and only sigwait() below receives them: SIGINT and SIGTERM stop, SIGHUP reloads
  // the tokens file.
  sigset_t handled_signals;
  sigemptyset(&handled_signals);
  sigaddset(&handled_signals, SIGINT);
  sigaddset(&handled_signals, SIGTERM);
  sigaddset(&handled_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &handled_signals, nullptr);

  auto server = apeserve::server::ApeServer::Start(options);
  if (!server.ok()) {
    spdlog::error("cannot start: {}", server.status().ToString());
    return 1;
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty() && !WritePortFile(port_file, (*server)->port())) {
    spdlog::error("cannot write the port to --port_file='{}'", port_file);
    return 1;
  }

  int signal = 0;
  while (sigwait(&handled_signals, &signal) == 0 && signal == SIGHUP) {
    (*server)->ReloadTokens().IgnoreError();  // logged; the old tokens stay in force
  }
  spdlog::info("received {}; shutting down", signal == SIGINT ? "SIGINT" : "SIGTERM");
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  (*server)->Wait();
  spdlog::info("stopped");
  return 0;
}
