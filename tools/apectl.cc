// apectl: the command-line client of apeserve. See kUsageText for the commands and the
// exit codes (apectl_common.h) that scripts can rely on.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "ape/v1/admin.grpc.pb.h"
#include "ape/v1/context.grpc.pb.h"
#include "ape/v1/generation.grpc.pb.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "tools/apectl_common.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "address of the apeserve to talk to");
ABSL_FLAG(std::string, target, "", "the same as --server (older name)");
ABSL_FLAG(std::string, namespace, "default", "namespace of the contexts");
ABSL_FLAG(std::string, token, "",
          "API token, sent as 'authorization: Bearer <token>' (default: $APESERVE_TOKEN)");
ABSL_FLAG(bool, tls, false,
          "speak TLS (implied by --tls_ca, --tls_cert, --tls_server_name); without --tls_ca, "
          "the server's certificate is checked against the system's CAs");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA certificates that signed the server's certificate");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate of this client (mutual TLS), with --tls_key");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "",
          "the name the server's certificate must carry, when it differs from --server's host");
ABSL_FLAG(bool, json, false, "print replies as JSON, for scripts");
ABSL_FLAG(absl::Duration, timeout, absl::ZeroDuration(),
          "deadline of each call; 0 is none (health and info then wait 5 s at most)");
// Generation and scoring.
ABSL_FLAG(std::vector<std::string>, contexts, {}, "ask, generate, score: ids of stored contexts");
ABSL_FLAG(std::vector<std::string>, inline_files, {},
          "ask, generate, score: files sent as inline contexts (not stored)");
ABSL_FLAG(std::string, mode, "ape", "ask, generate, score: sequential, parallel or ape");
ABSL_FLAG(std::string, system_prompt, "", "ask, generate, score: the system turn");
ABSL_FLAG(std::optional<int>, max_tokens, std::nullopt, "ask, generate: tokens at most");
ABSL_FLAG(std::optional<float>, temperature, std::nullopt, "ask, generate: 0 is greedy");
ABSL_FLAG(std::optional<float>, top_p, std::nullopt, "ask, generate: nucleus sampling");
ABSL_FLAG(std::optional<int>, top_k, std::nullopt, "ask, generate: keep the k most likely");
ABSL_FLAG(std::optional<uint64_t>, seed, std::nullopt, "ask, generate: seed of the sampler");
ABSL_FLAG(std::vector<std::string>, stop, {}, "ask, generate: stop strings");
ABSL_FLAG(std::optional<float>, ape_temperature, std::nullopt, "APE's T (server default if unset)");
ABSL_FLAG(std::optional<float>, ape_scale, std::nullopt, "APE's S (server default if unset)");
ABSL_FLAG(std::string, ape_form, "", "APE's form: multiplicative or additive");
ABSL_FLAG(std::string, query, "", "score: the question the continuations answer");
ABSL_FLAG(bool, text, false, "get: include the stored text");
ABSL_FLAG(std::string, labels, "", "ingest, update: labels k=v,k2=v2 (ingest: added to each)");
ABSL_FLAG(int, batch, 32, "ingest: documents per BatchCreateContexts call");
ABSL_FLAG(bool, skip_existing, true,
          "ingest: skip ids the namespace already holds (so an interrupted ingest resumes)");
ABSL_FLAG(std::string, label_filter, "", "list: only contexts with these labels, k=v,k2=v2");

namespace apeserve::apectl {
namespace {

constexpr char kUsageText[] =
    "apectl: command-line client of apeserve.\n\n"
    "Usage: apectl [--server=HOST:PORT] [--namespace=NS] [--json] [--timeout=D] COMMAND [ARGS]\n"
    "Token: --token=T or $APESERVE_TOKEN, when the server checks tokens\n"
    "TLS: --tls_ca=CA.pem (--tls_cert=C.pem --tls_key=K.pem for mutual TLS, --tls_server_name)\n"
    "Contexts:\n"
    "  ingest FILES|FOLDERS   store each file (or each line of a .jsonl file) as a context;\n"
    "                         skips ids already stored (--labels, --batch, --skip_existing)\n"
    "  list                   ids, token counts and labels (--label_filter=k=v)\n"
    "  get ID                 one context as JSON (--text to include its text)\n"
    "  update ID              replace its labels (--labels=k=v,...)\n"
    "  delete ID...           delete contexts (deleting a missing one is not an error)\n"
    "Questions:\n"
    "  ask QUESTION           stream the answer (--contexts=a,b --mode=ape|parallel|sequential,\n"
    "                         --max_tokens, --temperature, --seed, --stop, --inline_files, ...)\n"
    "  generate QUESTION      the same in one reply, printed as JSON\n"
    "  score CONTINUATION...  log-probabilities of each continuation (--query, --contexts)\n"
    "Server:\n"
    "  info | model | stats | load   as JSON\n"
    "  health                 SERVING or NOT_SERVING (grpc.health.v1)\n"
    "Exit status: 0 success, 1 the call failed, 2 bad usage, 3 not serving, 4 no such\n"
    "context, 5 ingest stored some documents but not all.";

// The channel to `target`: plaintext, or TLS as the --tls flags say.
absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const std::string& target) {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca), cert = absl::GetFlag(FLAGS_tls_cert),
                    key = absl::GetFlag(FLAGS_tls_key),
                    server_name = absl::GetFlag(FLAGS_tls_server_name);
  if (!absl::GetFlag(FLAGS_tls) && ca.empty() && cert.empty() && key.empty() &&
      server_name.empty()) {
    return grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  }
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  grpc::SslCredentialsOptions ssl;
  if (!ca.empty()) {
    APE_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(ca));
  }
  if (!cert.empty()) {
    APE_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFile(cert));
    APE_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFile(key));
  }
  grpc::ChannelArguments arguments;
  if (!server_name.empty()) arguments.SetSslTargetNameOverride(server_name);
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), arguments);
}

ape::v1::EncodingMode ModeOf(const std::string& name) {
  if (name == "sequential") return ape::v1::ENCODING_MODE_SEQUENTIAL;
  if (name == "parallel") return ape::v1::ENCODING_MODE_PARALLEL;
  if (name == "ape") return ape::v1::ENCODING_MODE_APE;
  return ape::v1::ENCODING_MODE_UNSPECIFIED;
}

// The fields Generate and Score requests share, from the flags.
template <typename Request>
std::optional<int> FillQuery(const Connection& connection, Request& request) {
  request.set_namespace_(connection.namespace_id);
  for (const std::string& id : absl::GetFlag(FLAGS_contexts)) request.add_context_ids(id);
  for (const std::string& path : absl::GetFlag(FLAGS_inline_files)) {
    std::FILE* file = std::fopen(path.c_str(), "rb");
    if (file == nullptr) return UsageError(absl::StrCat("cannot read --inline_files '", path, "'"));
    std::string text;
    char buffer[1 << 16];
    for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), file)) > 0;) text.append(buffer, n);
    std::fclose(file);
    request.add_inline_contexts()->set_text(std::move(text));
  }
  const ape::v1::EncodingMode mode = ModeOf(absl::GetFlag(FLAGS_mode));
  if (mode == ape::v1::ENCODING_MODE_UNSPECIFIED) {
    return UsageError("--mode must be sequential, parallel or ape");
  }
  request.set_mode(mode);
  request.set_system_prompt(absl::GetFlag(FLAGS_system_prompt));
  if (const auto t = absl::GetFlag(FLAGS_ape_temperature))
    request.mutable_ape()->set_temperature(*t);
  if (const auto s = absl::GetFlag(FLAGS_ape_scale)) request.mutable_ape()->set_scale(*s);
  const std::string form = absl::GetFlag(FLAGS_ape_form);
  if (form == "multiplicative") {
    request.mutable_ape()->set_form(ape::v1::APE_SCALE_FORM_MULTIPLICATIVE);
  } else if (form == "additive") {
    request.mutable_ape()->set_form(ape::v1::APE_SCALE_FORM_ADDITIVE);
  } else if (!form.empty()) {
    return UsageError("--ape_form must be multiplicative or additive");
  }
  return std::nullopt;
}

std::optional<int> FillGenerate(const Connection& connection, const std::vector<std::string>& args,
                                ape::v1::GenerateRequest& request) {
  if (args.size() != 1) return UsageError("give the question as one argument (quote it)");
  request.set_query(args[0]);
  if (auto error = FillQuery(connection, request)) return error;
  ape::v1::SamplingParameters& sampling = *request.mutable_sampling();
  if (const auto v = absl::GetFlag(FLAGS_max_tokens)) sampling.set_max_tokens(*v);
  if (const auto v = absl::GetFlag(FLAGS_temperature)) sampling.set_temperature(*v);
  if (const auto v = absl::GetFlag(FLAGS_top_p)) sampling.set_top_p(*v);
  if (const auto v = absl::GetFlag(FLAGS_top_k)) sampling.set_top_k(*v);
  if (const auto v = absl::GetFlag(FLAGS_seed)) sampling.set_seed(*v);
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) sampling.add_stop(stop);
  return std::nullopt;
}

int Ask(const Connection& connection, const std::vector<std::string>& args) {
  ape::v1::GenerateRequest request;
  if (auto error = FillGenerate(connection, args, request)) return *error;
  auto stub = ape::v1::GenerationService::NewStub(connection.channel);
  grpc::ClientContext context;
  PrepareCall(context);
  auto reader = stub->GenerateStream(&context, request);
  ape::v1::GenerateStreamResponse chunk;
  ape::v1::StreamEnd end;
  while (reader->Read(&chunk)) {
    if (!connection.json) {
      std::fputs(chunk.text().c_str(), stdout);
      std::fflush(stdout);
    }
    if (chunk.has_end()) end = chunk.end();
  }
  if (grpc::Status status = reader->Finish(); !status.ok()) return Fail(status);
  if (connection.json) return PrintJson(end);
  const ape::v1::Usage& usage = end.usage();
  std::fprintf(stderr,
               "\n[%d context tokens: %d store, %d host, %d device, %d recomputed; %d generated; "
               "first token %.0f ms; %.1f tokens/s]\n",
               usage.context_tokens(), usage.context_tokens_store(), usage.context_tokens_host(),
               usage.context_tokens_device(), usage.context_tokens_recomputed(),
               usage.generated_tokens(), end.timings().time_to_first_token_ms(),
               end.timings().decode_tokens_per_second());
  std::putchar('\n');
  return kOk;
}

int Generate(const Connection& connection, const std::vector<std::string>& args) {
  ape::v1::GenerateRequest request;
  if (auto error = FillGenerate(connection, args, request)) return *error;
  grpc::ClientContext context;
  PrepareCall(context);
  ape::v1::GenerateResponse response;
  const grpc::Status status = ape::v1::GenerationService::NewStub(connection.channel)
                                  ->Generate(&context, request, &response);
  return status.ok() ? PrintJson(response) : Fail(status);
}

int Score(const Connection& connection, const std::vector<std::string>& args) {
  ape::v1::ScoreRequest request;
  if (args.empty()) return UsageError("score needs continuations to score");
  request.set_query(absl::GetFlag(FLAGS_query));
  if (auto error = FillQuery(connection, request)) return *error;
  for (const std::string& continuation : args) request.add_continuations(continuation);
  grpc::ClientContext context;
  PrepareCall(context);
  ape::v1::ScoreResponse response;
  const grpc::Status status =
      ape::v1::GenerationService::NewStub(connection.channel)->Score(&context, request, &response);
  if (!status.ok()) return Fail(status);
  if (connection.json) return PrintJson(response);
  for (int i = 0; i < response.scores_size(); ++i) {
    std::printf("%12.4f  %s\n", response.scores(i).total_logprob(),
                args[static_cast<size_t>(i)].c_str());
  }
  return kOk;
}

int List(const Connection& connection) {
  auto labels = ParseLabels(absl::GetFlag(FLAGS_label_filter));
  if (!labels.ok()) return UsageError(std::string(labels.status().message()));
  auto stub = ape::v1::ContextService::NewStub(connection.channel);
  ape::v1::ListContextsRequest request;
  request.set_namespace_(connection.namespace_id);
  request.set_page_size(1000);
  request.mutable_label_filter()->insert(labels->begin(), labels->end());
  do {
    grpc::ClientContext context;
    PrepareCall(context);
    ape::v1::ListContextsResponse page;
    if (grpc::Status status = stub->ListContexts(&context, request, &page); !status.ok()) {
      return Fail(status);
    }
    for (const ape::v1::Context& entry : page.contexts()) {
      if (connection.json) {
        std::puts(ToJson(entry, /*indent=*/false).c_str());
        continue;
      }
      std::string labels_text;
      for (const auto& [key, value] : entry.labels()) {
        absl::StrAppend(&labels_text, labels_text.empty() ? "" : ",", key, "=", value);
      }
      std::printf("%s\t%d tokens\t%s\n", entry.context_id().c_str(), entry.token_count(),
                  labels_text.c_str());
    }
    request.set_page_token(page.next_page_token());
  } while (!request.page_token().empty());
  return kOk;
}

int Get(const Connection& connection, const std::vector<std::string>& args) {
  if (args.size() != 1) return UsageError("get takes one id");
  ape::v1::GetContextRequest request;
  request.set_namespace_(connection.namespace_id);
  request.set_context_id(args[0]);
  request.set_include_text(absl::GetFlag(FLAGS_text));
  grpc::ClientContext context;
  PrepareCall(context);
  ape::v1::Context response;
  const grpc::Status status = ape::v1::ContextService::NewStub(connection.channel)
                                  ->GetContext(&context, request, &response);
  return status.ok() ? PrintJson(response) : Fail(status);
}

int Update(const Connection& connection, const std::vector<std::string>& args) {
  if (args.size() != 1) return UsageError("update takes one id");
  auto labels = ParseLabels(absl::GetFlag(FLAGS_labels));
  if (!labels.ok()) return UsageError(std::string(labels.status().message()));
  ape::v1::UpdateContextRequest request;
  request.mutable_context()->set_namespace_(connection.namespace_id);
  request.mutable_context()->set_context_id(args[0]);
  request.mutable_context()->mutable_labels()->insert(labels->begin(), labels->end());
  request.mutable_update_mask()->add_paths("labels");
  grpc::ClientContext context;
  PrepareCall(context);
  ape::v1::Context response;
  const grpc::Status status = ape::v1::ContextService::NewStub(connection.channel)
                                  ->UpdateContext(&context, request, &response);
  return status.ok() ? PrintJson(response) : Fail(status);
}

int Delete(const Connection& connection, const std::vector<std::string>& args) {
  if (args.empty()) return UsageError("delete takes ids");
  auto stub = ape::v1::ContextService::NewStub(connection.channel);
  for (const std::string& id : args) {
    ape::v1::DeleteContextRequest request;
    request.set_namespace_(connection.namespace_id);
    request.set_context_id(id);
    grpc::ClientContext context;
    PrepareCall(context);
    ape::v1::DeleteContextResponse response;
    if (grpc::Status status = stub->DeleteContext(&context, request, &response); !status.ok()) {
      return Fail(status);
    }
    if (connection.json) {
      std::printf("{\"context_id\": \"%s\", \"existed\": %s}\n", id.c_str(),
                  response.existed() ? "true" : "false");
    } else {
      std::printf("%s %s\n", response.existed() ? "deleted" : "absent", id.c_str());
    }
  }
  return kOk;
}

// The AdminService's unary calls: an empty request, a reply printed as JSON.
template <typename Request, typename Reply>
int Admin(const Connection& connection,
          grpc::Status (ape::v1::AdminService::Stub::*call)(grpc::ClientContext*, const Request&,
                                                            Reply*)) {
  auto stub = ape::v1::AdminService::NewStub(connection.channel);
  grpc::ClientContext context;
  PrepareCall(context, absl::Seconds(5));
  Reply reply;
  const grpc::Status status = ((*stub).*call)(&context, Request(), &reply);
  return status.ok() ? PrintJson(reply) : Fail(status);
}

// grpc.health.v1.Health/Check through the generic stub: gRPC ships no C++ stubs for
// it. The request {service: ""} encodes to zero bytes; the reply is field 1, a varint.
int Health(const Connection& connection) {
  grpc::GenericStub stub(connection.channel);
  grpc::ClientContext context;
  PrepareCall(context, absl::Seconds(5));
  grpc::Slice empty_message;
  grpc::ByteBuffer request(&empty_message, 1), reply;
  grpc::Status status;
  absl::Notification done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &reply,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) return Fail(status);

  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (reply.Dump(&slices).ok()) {
    for (const grpc::Slice& slice : slices) {
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
  }
  // Field 1, wire type 0 (tag 0x08), then a one-byte enum; proto3 leaves out the
  // default, UNKNOWN (0).
  int serving_status = 0;
  const auto byte = [&bytes](size_t i) { return static_cast<unsigned char>(bytes[i]); };
  if (bytes.size() == 2 && byte(0) == 0x08 && byte(1) <= 3) {
    serving_status = byte(1);
  } else if (!bytes.empty()) {
    std::fprintf(stderr, "apectl: unreadable health reply of %zu bytes\n", bytes.size());
    return kCallFailed;
  }
  static constexpr const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  std::puts(kNames[serving_status]);
  return serving_status == 1 ? kOk : kNotServing;
}

}  // namespace

void PrepareCall(grpc::ClientContext& context, absl::Duration fallback) {
  absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  if (timeout <= absl::ZeroDuration()) timeout = fallback;
  if (timeout > absl::ZeroDuration())
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (const std::string token = absl::GetFlag(FLAGS_token); !token.empty()) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
  }
}

int Fail(const grpc::Status& status) {
  std::fprintf(stderr, "apectl: %s (gRPC code %d)\n", status.error_message().c_str(),
               static_cast<int>(status.error_code()));
  return status.error_code() == grpc::StatusCode::NOT_FOUND ? kNotFound : kCallFailed;
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "apectl: %s\n\n%s\n", message.c_str(), kUsageText);
  return kBadUsage;
}

std::string ToJson(const google::protobuf::Message& message, bool indent) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = indent;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) return "{}";
  if (!indent) json.erase(std::remove(json.begin(), json.end(), '\n'), json.end());
  return json;
}

int PrintJson(const google::protobuf::Message& message) {
  std::fputs(ToJson(message, /*indent=*/true).c_str(), stdout);
  return kOk;
}

absl::StatusOr<std::map<std::string, std::string>> ParseLabels(const std::string& text) {
  std::map<std::string, std::string> labels;
  if (text.empty()) return labels;
  for (absl::string_view pair : absl::StrSplit(text, ',')) {
    const size_t equals = pair.find('=');
    if (equals == absl::string_view::npos || equals == 0) {
      return absl::InvalidArgumentError(absl::StrCat("label '", pair, "' is not key=value"));
    }
    labels[std::string(pair.substr(0, equals))] = std::string(pair.substr(equals + 1));
  }
  return labels;
}

}  // namespace apeserve::apectl

int main(int argc, char** argv) {
  using namespace apeserve::apectl;  // NOLINT(google-build-using-namespace): main only
  absl::SetProgramUsageMessage(kUsageText);
  const std::vector<char*> words = absl::ParseCommandLine(argc, argv);
  if (const char* token = std::getenv("APESERVE_TOKEN");
      token != nullptr && absl::GetFlag(FLAGS_token).empty()) {
    absl::SetFlag(&FLAGS_token, token);
  }
  if (words.size() < 2) {
    std::fprintf(stderr, "%s\n", kUsageText);
    return kBadUsage;
  }
  const std::string command = words[1];
  const std::vector<std::string> args(words.begin() + 2, words.end());
  std::string target = absl::GetFlag(FLAGS_target);
  if (target.empty()) target = absl::GetFlag(FLAGS_server);
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = OpenChannel(target);
  if (!channel.ok()) return UsageError(std::string(channel.status().message()));
  const Connection connection{.channel = *std::move(channel),
                              .namespace_id = absl::GetFlag(FLAGS_namespace),
                              .json = absl::GetFlag(FLAGS_json)};
  const auto no_args = [&](int (*run)(const Connection&)) {
    return args.empty() ? run(connection) : UsageError(command + " takes no arguments");
  };
  if (command == "ingest") return Ingest(connection, args);
  if (command == "list") return no_args(List);
  if (command == "get") return Get(connection, args);
  if (command == "update") return Update(connection, args);
  if (command == "delete") return Delete(connection, args);
  if (command == "ask") return Ask(connection, args);
  if (command == "generate") return Generate(connection, args);
  if (command == "score") return Score(connection, args);
  if (command == "health") return no_args(Health);
  if (command == "info") {
    return no_args(
        +[](const Connection& c) { return Admin(c, &ape::v1::AdminService::Stub::GetServerInfo); });
  }
  if (command == "model") {
    return no_args(
        +[](const Connection& c) { return Admin(c, &ape::v1::AdminService::Stub::GetModelInfo); });
  }
  if (command == "stats") {
    return no_args(
        +[](const Connection& c) { return Admin(c, &ape::v1::AdminService::Stub::GetStats); });
  }
  if (command == "load") {
    return no_args(
        +[](const Connection& c) { return Admin(c, &ape::v1::AdminService::Stub::GetLoad); });
  }
  std::fprintf(stderr, "apectl: unknown command '%s'\n\n%s\n", command.c_str(), kUsageText);
  return kBadUsage;
}
