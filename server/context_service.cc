#include "server/context_service.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/utf8.h"
#include "google/protobuf/util/time_util.h"
#include "server/call_support.h"
#include "server/ingest_task.h"
#include "server/reply_channel.h"

namespace apeserve::server {
namespace {

using BatchChannel = ReplyChannel<ape::v1::BatchCreateContextsResponse>;

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;

std::string Summary(const ape::v1::Context& context) {
  return absl::StrCat("namespace=", context.namespace_(),
                      " context_id=", absl::CHexEscape(context.context_id()),
                      " tokens=", context.token_count());
}

}  // namespace

bool ContextService::KvStored(const cache::StoredContext& document) const {
  auto prefix = backend_.prefixes.Get("");
  return prefix.ok() && backend_.registry.KvStored(document, (*prefix)->hash);
}

absl::StatusOr<ape::v1::Context> ContextService::StoreOne(grpc::ServerContext* context,
                                                          ape::v1::CreateContextRequest request) {
  auto channel = std::make_shared<BatchChannel>();
  std::vector<ape::v1::CreateContextRequest> one;
  one.push_back(std::move(request));
  if (absl::Status queued = backend_.scheduler.Submit(
          std::make_shared<IngestTask>(backend_, std::move(one), AliveCheckFor(context), channel));
      !queued.ok()) {
    return queued;
  }
  std::optional<ape::v1::BatchCreateContextsResponse> result;
  while (auto reply = channel->Receive()) result = std::move(reply);
  if (absl::Status status = channel->status(); !status.ok()) return status;
  if (!result.has_value()) return absl::InternalError("the store task sent no result");
  if (result->has_error()) {
    return absl::Status(static_cast<absl::StatusCode>(result->error().code()),
                        result->error().message());
  }
  return result->context();
}

grpc::Status ContextService::CreateContext(grpc::ServerContext* context,
                                           const ape::v1::CreateContextRequest* request,
                                           ape::v1::Context* response) {
  const absl::Time start = absl::Now();
  if (absl::Status allowed =
          backend_.auth.Check(*context, Role::kWrite, NamespaceOf(request->namespace_()));
      !allowed.ok()) {
    return FinishCall(backend_, "CreateContext", "", allowed, start);
  }
  const absl::StatusOr<ape::v1::Context> stored = StoreOne(context, *request);
  if (stored.ok()) *response = *stored;
  return FinishCall(backend_, "CreateContext", "", stored.status(), start,
                    stored.ok() ? Summary(*response) : "");
}

grpc::Status ContextService::UploadContext(
    grpc::ServerContext* context, grpc::ServerReader<ape::v1::UploadContextRequest>* reader,
    ape::v1::Context* response) {
  const absl::Time start = absl::Now();
  const auto finish = [&](const absl::Status& status) {
    return FinishCall(backend_, "UploadContext", "", status, start,
                      status.ok() ? Summary(*response) : "");
  };
  // Without a valid token the call ends before any text is read.
  if (absl::Status known = backend_.auth.Check(*context, Role::kWrite, std::nullopt); !known.ok()) {
    return finish(known);
  }
  ape::v1::UploadContextRequest message;
  if (!reader->Read(&message) || !message.has_metadata()) {
    return finish(absl::InvalidArgumentError(
        "the first message of an upload must carry the metadata (and no text chunk)"));
  }
  ape::v1::CreateContextRequest request = std::move(*message.mutable_metadata());
  if (absl::Status allowed =
          backend_.auth.Check(*context, Role::kWrite, NamespaceOf(request.namespace_()));
      !allowed.ok()) {
    return finish(allowed);
  }
  if (!request.text().empty()) {
    return finish(absl::InvalidArgumentError(
        "metadata.text must be empty in an upload: send the text as text_chunk messages"));
  }
  std::string text;
  const size_t limit = backend_.options.limits.max_context_bytes;
  while (reader->Read(&message)) {
    if (!message.has_text_chunk()) {
      return finish(absl::InvalidArgumentError("only the first upload message may carry metadata"));
    }
    if (text.size() + message.text_chunk().size() > limit) {
      return finish(absl::ResourceExhaustedError(absl::StrCat(
          "the upload passes ", limit, " bytes, this server's limit (--max_context_bytes)")));
    }
    text += message.text_chunk();
  }
  if (context->IsCancelled()) return finish(absl::CancelledError("the upload was cancelled"));
  if (!IsValidUtf8(text)) {
    return finish(absl::InvalidArgumentError("the uploaded text is not valid UTF-8"));
  }
  request.set_text(std::move(text));
  const absl::StatusOr<ape::v1::Context> stored = StoreOne(context, std::move(request));
  if (stored.ok()) *response = *stored;
  return finish(stored.status());
}

grpc::Status ContextService::BatchCreateContexts(
    grpc::ServerContext* context, const ape::v1::BatchCreateContextsRequest* request,
    grpc::ServerWriter<ape::v1::BatchCreateContextsResponse>* writer) {
  const absl::Time start = absl::Now();
  const auto finish = [&](const absl::Status& status, const std::string& details = "") {
    return FinishCall(backend_, "BatchCreateContexts", "", status, start, details);
  };
  // The token first (an empty batch from a stranger is refused as such), then each
  // namespace the batch writes to, once.
  if (absl::Status known = backend_.auth.Check(*context, Role::kWrite, std::nullopt); !known.ok()) {
    return finish(known);
  }
  absl::flat_hash_set<std::string> namespaces;
  for (const ape::v1::CreateContextRequest& one : request->contexts()) {
    namespaces.insert(NamespaceOf(one.namespace_()));
  }
  for (const std::string& namespace_id : namespaces) {
    if (absl::Status allowed = backend_.auth.Check(*context, Role::kWrite, namespace_id);
        !allowed.ok()) {
      return finish(allowed);
    }
  }
  const int limit = backend_.options.limits.max_batch_contexts;
  if (request->contexts_size() == 0) {
    return finish(absl::InvalidArgumentError("contexts is empty: nothing to store"));
  }
  if (request->contexts_size() > limit) {
    return finish(absl::InvalidArgumentError(
        absl::StrCat("contexts has ", request->contexts_size(), " entries; at most ", limit,
                     " per call (--max_batch_contexts): split the batch")));
  }
  auto channel = std::make_shared<BatchChannel>();
  if (absl::Status queued = backend_.scheduler.Submit(
          std::make_shared<IngestTask>(backend_,
                                       std::vector<ape::v1::CreateContextRequest>(
                                           request->contexts().begin(), request->contexts().end()),
                                       AliveCheckFor(context), channel));
      !queued.ok()) {
    return finish(queued);
  }
  int failed = 0, done = 0;
  bool writable = true;
  while (auto reply = channel->Receive()) {
    done = reply->done();
    if (reply->has_error()) ++failed;
    if (writable) writable = writer->Write(*reply);
  }
  return finish(channel->status(), absl::StrCat("contexts=", done, " failed=", failed));
}

grpc::Status ContextService::GetContext(grpc::ServerContext* context,
                                        const ape::v1::GetContextRequest* request,
                                        ape::v1::Context* response) {
  const absl::Time start = absl::Now();
  if (absl::Status allowed =
          backend_.auth.Check(*context, Role::kRead, NamespaceOf(request->namespace_()));
      !allowed.ok()) {
    return FinishCall(backend_, "GetContext", "", allowed, start);
  }
  absl::StatusOr<cache::StoredContext> document =
      backend_.registry.Get(NamespaceOf(request->namespace_()), request->context_id());
  if (document.ok()) {
    *response = ToContextProto(*document, KvStored(*document), request->include_text());
  }
  return FinishCall(backend_, "GetContext", "", document.status(), start);
}

grpc::Status ContextService::ListContexts(grpc::ServerContext* context,
                                          const ape::v1::ListContextsRequest* request,
                                          ape::v1::ListContextsResponse* response) {
  const absl::Time start = absl::Now();
  const auto finish = [&](const absl::Status& status) {
    return FinishCall(backend_, "ListContexts", "", status, start);
  };
  if (absl::Status allowed =
          backend_.auth.Check(*context, Role::kRead, NamespaceOf(request->namespace_()));
      !allowed.ok()) {
    return finish(allowed);
  }
  if (request->page_size() < 0 || request->page_size() > kMaxPageSize) {
    return finish(absl::InvalidArgumentError(absl::StrCat(
        "page_size is ", request->page_size(), "; it must be in [0, ", kMaxPageSize, "]")));
  }
  cache::ListOptions options{
      .limit =
          static_cast<size_t>(request->page_size() == 0 ? kDefaultPageSize : request->page_size()),
      .labels = {request->label_filter().begin(), request->label_filter().end()}};
  if (!request->page_token().empty() &&
      !absl::WebSafeBase64Unescape(request->page_token(), &options.start_after)) {
    return finish(absl::InvalidArgumentError(
        "page_token is not one this server gave out: pass next_page_token unchanged"));
  }
  absl::StatusOr<cache::ContextPage> page =
      backend_.registry.List(NamespaceOf(request->namespace_()), options);
  if (!page.ok()) return finish(page.status());
  for (const cache::StoredContext& document : page->contexts) {
    *response->add_contexts() = ToContextProto(document, KvStored(document), false);
  }
  if (!page->next_start_after.empty()) {
    response->set_next_page_token(absl::WebSafeBase64Escape(page->next_start_after));
  }
  return finish(absl::OkStatus());
}

grpc::Status ContextService::UpdateContext(grpc::ServerContext* context,
                                           const ape::v1::UpdateContextRequest* request,
                                           ape::v1::Context* response) {
  const absl::Time start = absl::Now();
  const auto finish = [&](const absl::Status& status) {
    return FinishCall(backend_, "UpdateContext", "", status, start);
  };
  const ape::v1::Context& update = request->context();
  if (absl::Status allowed =
          backend_.auth.Check(*context, Role::kWrite, NamespaceOf(update.namespace_()));
      !allowed.ok()) {
    return finish(allowed);
  }
  cache::ContextUpdate change;
  std::vector<std::string> paths(request->update_mask().paths().begin(),
                                 request->update_mask().paths().end());
  if (paths.empty()) paths.push_back("labels");
  for (const std::string& path : paths) {
    if (path == "labels") {
      change.labels.emplace(update.labels().begin(), update.labels().end());
    } else if (path == "pinned") {
      change.pinned = update.pinned();
    } else if (path == "expire_time") {
      change.expires = absl::InfiniteFuture();
      if (update.has_expire_time()) {
        change.expires = absl::FromUnixMicros(
            google::protobuf::util::TimeUtil::TimestampToMicroseconds(update.expire_time()));
        if (*change.expires <= absl::Now()) {
          return finish(absl::InvalidArgumentError(
              "context.expire_time is not in the future: delete the context instead"));
        }
      }
    } else if (path == "ttl") {
      absl::StatusOr<absl::Duration> ttl = TtlOf(update.ttl(), "context.ttl");
      if (!ttl.ok()) return finish(ttl.status());
      change.expires = *ttl > absl::ZeroDuration() ? absl::Now() + *ttl : absl::InfiniteFuture();
    } else {
      return finish(absl::InvalidArgumentError(
          absl::StrCat("update_mask names '", path,
                       "'; the fields that may change are labels, pinned, expire_time and ttl")));
    }
  }
  absl::StatusOr<cache::StoredContext> document =
      backend_.registry.Update(NamespaceOf(update.namespace_()), update.context_id(), change);
  if (document.ok()) *response = ToContextProto(*document, KvStored(*document), false);
  return finish(document.status());
}

grpc::Status ContextService::DeleteContext(grpc::ServerContext* context,
                                           const ape::v1::DeleteContextRequest* request,
                                           ape::v1::DeleteContextResponse* response) {
  const absl::Time start = absl::Now();
  if (absl::Status allowed =
          backend_.auth.Check(*context, Role::kWrite, NamespaceOf(request->namespace_()));
      !allowed.ok()) {
    return FinishCall(backend_, "DeleteContext", "", allowed, start);
  }
  absl::StatusOr<bool> existed =
      backend_.registry.Delete(NamespaceOf(request->namespace_()), request->context_id());
  if (existed.ok()) response->set_existed(*existed);
  return FinishCall(backend_, "DeleteContext", "", existed.status(), start);
}

}  // namespace apeserve::server
