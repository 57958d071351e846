// Settings of one apeserve process. Flags become these once, in apeserve_main.cc; nothing
// below main reads a flag.
#ifndef APESERVE_SERVER_SERVER_OPTIONS_H_
#define APESERVE_SERVER_SERVER_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "cache/kv_quantization.h"
#include "model/ape_options.h"
#include "server/tls_credentials.h"

namespace apeserve::server {

// What one request may ask for. Requests past a limit are refused with a message that
// names the limit; none of them changes what the model can do.
struct RequestLimits {
  // Bytes of one context's text. Default: 16 MiB (the store's own limit).
  size_t max_context_bytes = size_t{16} << 20;
  // Tokens of one context; 0: as many as fit the model's window after the prefix.
  // Default: 0.
  int64_t max_context_tokens = 0;
  // Contexts (stored and inline) one request names. Default: 256.
  int max_contexts_per_request = 256;
  // Tokens of a query. Default: 4096.
  int64_t max_query_tokens = 4096;
  // Tokens one request may generate; also the default of requests that leave
  // max_tokens unset, when below 256. Default: 4096.
  int max_new_tokens = 4096;
  // Continuations one Score request may carry. Default: 64.
  int max_continuations = 64;
  // Contexts one BatchCreateContexts may carry. Default: 10,000.
  int max_batch_contexts = 10000;
  // Requests waiting for the engine; one more is refused with RESOURCE_EXHAUSTED.
  // Default: 64.
  int max_queued_requests = 64;
  // Requests the engine works on at once: the largest batch of a step. 1 runs requests
  // one after another. Default: 16.
  int max_running_requests = 16;
};

// How the scheduler batches the running requests' steps (SchedulerOptions).
struct BatchingOptions {
  // Tokens one step feeds in all while some request decodes: every decoding request's
  // next token, then prompt chunks. Bounds how much a new prompt delays the streams'
  // next tokens. Default: 64.
  int max_step_tokens = 64;
  // Tokens of a prompt chunk while no request decodes. Default: 512.
  int max_prefill_chunk = 512;
  // KV bytes the running requests may hold in all (prompt and answer, reserved before
  // a request starts; requests wait their turn beyond it, and one that needs more is
  // refused); 0: unlimited. Default: 4 GiB.
  size_t max_running_kv_bytes = size_t{4} << 30;
  // Ingestion's share of a step's prompt tokens, in [0, 1]: the most it takes while
  // answers stream, the least it gets when queries' prompts want tokens too
  // (SchedulerOptions::ingest_share).
  // Default: 0.2.
  double ingest_share = 0.2;
  // CPU threads of decode steps and of prompt work (model::EngineOptions); 0:
  // automatic (decoding: the cores less one, at least 1; prompts: all cores).
  int decode_threads = 0;
  int prefill_threads = 0;
};

// Where KV lives and how it is kept (cache::ContextRegistryOptions).
struct StorageOptions {
  // Byte budgets: decoded KV in host memory (default 1 GiB); KV on the GPU (default 0,
  // off; used only on a CUDA device); KV in the store (default 0, unlimited).
  size_t host_cache_bytes = size_t{1} << 30;
  size_t device_cache_bytes = 0;
  size_t stored_kv_bytes = 0;
  // fsync the write-ahead log before acknowledging a write. Default: true.
  bool sync_writes = true;
  // How new KV is stored. Default: as computed (float).
  cache::KvQuantization kv_quantization = cache::KvQuantization::kNone;
};

struct ServerOptions {
  // host:port to listen on; port 0 picks a free port (see ApeServer::port()).
  // Default: "127.0.0.1:50051" (loopback only: exposing it is a deliberate choice).
  std::string listen_address = "127.0.0.1:50051";
  // GGUF model file. Required.
  std::string model_path;
  // Folder of the document and KV store; created when missing. Required.
  std::string data_dir;
  // Compute device: "auto", "cpu", "cuda" or "cuda:N". Default: "auto".
  std::string device = "auto";
  // Compute dtype: "auto", "float32", "bfloat16" or "float16". Default: "auto"
  // (float32 on the CPU, bfloat16 on a GPU).
  std::string dtype = "auto";
  // Largest request the server accepts, in bytes. Default: 64 MiB.
  int max_receive_message_bytes = 64 << 20;
  // APE's temperature, scale and scale form for requests that leave them unset (e.g.
  // the values `apeeval calibrate` chose for the model). Default: model::ApeOptions's,
  // the published form at the authors' T = S = 0.9.
  model::ApeOptions ape_defaults;
  // Where ape_defaults came from, for ServerInfo: the calibration file, or empty.
  std::string ape_calibration_file;
  // The model fingerprint the calibration names, if any. A calibration made for another
  // model is used, with a warning at start: its values are valid, but tuned elsewhere.
  std::string ape_calibration_fingerprint;
  RequestLimits limits;
  BatchingOptions batching;
  StorageOptions storage;
  // TLS of the gRPC port (default: plaintext).
  TlsOptions tls;
  // JSON file of the tokens that may call the API, hashed, with their roles and
  // namespaces (server/token_auth.h); empty: no authentication. Default: empty.
  std::string auth_tokens_file;
  // With authentication, whether equal documents in different namespaces share one KV.
  // false: the KV key is salted with the namespace (ContextRegistryOptions::
  // isolate_namespaces), so that no tenant learns by timing what another stored.
  // Without authentication every caller sees every namespace, and KV is shared.
  // Default: false.
  bool share_kv_across_namespaces = false;
  // host:port of the Prometheus metrics endpoint (HTTP GET /metrics); port 0 picks a
  // free one; empty turns it off. Default: "127.0.0.1:9464" (loopback only).
  std::string metrics_address = "127.0.0.1:9464";
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_SERVER_OPTIONS_H_
