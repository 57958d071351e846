// apectl ingest: stores files and folders as contexts, in batches, with progress, and
// resumably (ids already stored are skipped, so an interrupted ingest can be rerun).
//
// A file is one document whose id is its path relative to the folder named on the
// command line (or its path as given). A .jsonl file holds one document per line:
// {"id": "...", "text": "...", "labels": {"k": "v"}}, id defaulting to "<file>:<line>".
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "ape/v1/context.grpc.pb.h"
#include "common/utf8.h"
#include "tools/apectl_common.h"

// Defined in apectl.cc, where --help finds them.
ABSL_DECLARE_FLAG(std::string, labels);
ABSL_DECLARE_FLAG(int, batch);
ABSL_DECLARE_FLAG(bool, skip_existing);

namespace apeserve::apectl {
absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

namespace {

namespace fs = std::filesystem;

struct Document {
  std::string id;
  std::string text;
  std::map<std::string, std::string> labels;
};

// The documents of one file, or an error naming it.
absl::Status Collect(const fs::path& path, const std::string& id, std::vector<Document>& out) {
  absl::StatusOr<std::string> text = ReadFile(path.string());
  if (!text.ok()) return text.status();
  if (path.extension() != ".jsonl") {
    if (!IsValidUtf8(*text))
      return absl::InvalidArgumentError(absl::StrCat(path.string(), " is not UTF-8 text"));
    if (text->empty()) return absl::OkStatus();  // nothing to store
    out.push_back({.id = id, .text = *std::move(text), .labels = {}});
    return absl::OkStatus();
  }
  std::istringstream lines(*text);
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    if (line.empty()) continue;
    const nlohmann::json json = nlohmann::json::parse(line, nullptr, false);
    const std::string where = absl::StrCat(path.string(), ":", number);
    if (!json.is_object() || !json.contains("text") || !json["text"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": want {\"id\": ..., \"text\": ..., \"labels\": {...}}"));
    }
    if (json.contains("id") && !json["id"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": \"id\" must be a string"));
    }
    Document document{.id = json.value("id", where), .text = json["text"], .labels = {}};
    if (json.contains("labels") && json["labels"].is_object()) {
      for (const auto& [key, value] : json["labels"].items()) {
        if (value.is_string()) document.labels[key] = value;
      }
    }
    out.push_back(std::move(document));
  }
  return absl::OkStatus();
}

// Every document under `args`, files of a folder in path order.
absl::StatusOr<std::vector<Document>> CollectAll(const std::vector<std::string>& args) {
  std::vector<Document> documents;
  for (const std::string& arg : args) {
    const fs::path root(arg);
    std::error_code error;
    if (fs::is_directory(root, error)) {
      std::vector<fs::path> files;
      for (auto it = fs::recursive_directory_iterator(root, error);
           !error && it != fs::recursive_directory_iterator(); it.increment(error)) {
        const std::string name = it->path().filename().string();
        if (absl::StartsWith(name, ".")) {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file()) files.push_back(it->path());
      }
      if (error)
        return absl::NotFoundError(absl::StrCat("cannot list ", arg, ": ", error.message()));
      std::sort(files.begin(), files.end());
      for (const fs::path& file : files) {
        if (absl::Status status = Collect(file, fs::relative(file, root).string(), documents);
            !status.ok()) {
          return status;
        }
      }
    } else if (fs::is_regular_file(root, error)) {
      if (absl::Status status = Collect(root, root.lexically_normal().string(), documents);
          !status.ok()) {
        return status;
      }
    } else {
      return absl::NotFoundError(absl::StrCat("no file or folder '", arg, "'"));
    }
  }
  return documents;
}

// Ids the namespace holds, read page by page.
absl::StatusOr<std::set<std::string>> StoredIds(ape::v1::ContextService::Stub& stub,
                                                const std::string& namespace_id) {
  std::set<std::string> ids;
  ape::v1::ListContextsRequest request;
  request.set_namespace_(namespace_id);
  request.set_page_size(1000);
  do {
    grpc::ClientContext context;
    PrepareCall(context, absl::Seconds(60));
    ape::v1::ListContextsResponse page;
    if (grpc::Status status = stub.ListContexts(&context, request, &page); !status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          status.error_message());
    }
    for (const ape::v1::Context& context_entry : page.contexts())
      ids.insert(context_entry.context_id());
    request.set_page_token(page.next_page_token());
  } while (!request.page_token().empty());
  return ids;
}

}  // namespace

int Ingest(const Connection& connection, const std::vector<std::string>& args) {
  if (args.empty()) return UsageError("ingest needs files or folders");
  const int batch_size = absl::GetFlag(FLAGS_batch);
  if (batch_size < 1) return UsageError("--batch must be at least 1");
  absl::StatusOr<std::map<std::string, std::string>> common =
      ParseLabels(absl::GetFlag(FLAGS_labels));
  if (!common.ok()) return UsageError(std::string(common.status().message()));
  absl::StatusOr<std::vector<Document>> documents = CollectAll(args);
  if (!documents.ok()) return UsageError(std::string(documents.status().message()));

  auto stub = ape::v1::ContextService::NewStub(connection.channel);
  std::set<std::string> stored;
  if (absl::GetFlag(FLAGS_skip_existing)) {
    absl::StatusOr<std::set<std::string>> ids = StoredIds(*stub, connection.namespace_id);
    if (!ids.ok()) {
      return Fail(grpc::Status(static_cast<grpc::StatusCode>(ids.status().code()),
                               std::string(ids.status().message())));
    }
    stored = *std::move(ids);
  }
  std::vector<const Document*> todo;
  for (const Document& document : *documents) {
    if (!stored.contains(document.id)) todo.push_back(&document);
  }
  const size_t skipped = documents->size() - todo.size();

  const bool tty = isatty(STDERR_FILENO) != 0;
  const absl::Time start = absl::Now();
  size_t done = 0, failed = 0;
  int64_t tokens = 0;
  nlohmann::json failures = nlohmann::json::array();
  const auto progress = [&](bool last) {
    const double seconds = std::max(1e-9, absl::ToDoubleSeconds(absl::Now() - start));
    const size_t width = 30;
    const size_t filled = todo.empty() ? width : width * done / todo.size();
    const std::string line = absl::StrFormat(
        "[%s%s] %zu/%zu documents  %.1f docs/s  %.0f tokens/s  %zu failed",
        std::string(filled, '#'), std::string(width - filled, ' '), done, todo.size(),
        static_cast<double>(done) / seconds, static_cast<double>(tokens) / seconds, failed);
    std::fprintf(stderr, tty ? "\r%s%s" : "%s%s", line.c_str(), tty && !last ? "" : "\n");
    std::fflush(stderr);
  };
  for (size_t first = 0; first < todo.size(); first += static_cast<size_t>(batch_size)) {
    ape::v1::BatchCreateContextsRequest request;
    const size_t end = std::min(todo.size(), first + static_cast<size_t>(batch_size));
    for (size_t i = first; i < end; ++i) {
      ape::v1::CreateContextRequest* create = request.add_contexts();
      create->set_namespace_(connection.namespace_id);
      create->set_context_id(todo[i]->id);
      create->set_text(todo[i]->text);
      create->mutable_labels()->insert(common->begin(), common->end());
      create->mutable_labels()->insert(todo[i]->labels.begin(), todo[i]->labels.end());
    }
    grpc::ClientContext context;
    PrepareCall(context);
    auto reader = stub->BatchCreateContexts(&context, request);
    ape::v1::BatchCreateContextsResponse reply;
    while (reader->Read(&reply)) {
      ++done;
      if (reply.has_error()) {
        ++failed;
        const Document& document = *todo[first + static_cast<size_t>(reply.index())];
        failures.push_back({{"id", document.id},
                            {"code", reply.error().code()},
                            {"message", reply.error().message()}});
        std::fprintf(stderr, "%sapectl: %s: %s\n", tty ? "\n" : "", document.id.c_str(),
                     reply.error().message().c_str());
      } else {
        tokens += reply.context().token_count();
      }
      if (tty) progress(false);
    }
    if (grpc::Status status = reader->Finish(); !status.ok()) {
      if (tty) std::fputc('\n', stderr);
      return Fail(status);
    }
    if (!tty) progress(false);
  }
  if (tty && !todo.empty()) progress(true);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const nlohmann::json summary = {{"stored", done - failed}, {"skipped", skipped},
                                  {"failed", failed},        {"tokens", tokens},
                                  {"seconds", seconds},      {"failures", failures}};
  if (connection.json) {
    std::puts(summary.dump(2).c_str());
  } else {
    std::printf("stored %zu, skipped %zu already stored, failed %zu; %lld tokens in %.1f s\n",
                done - failed, skipped, failed, static_cast<long long>(tokens), seconds);
  }
  return failed > 0 ? kPartialIngest : kOk;
}

}  // namespace apeserve::apectl
