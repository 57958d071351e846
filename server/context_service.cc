#include "server/context_service.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "google/protobuf/util/time_util.h"
#include "server/call_relay.h"
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

template <typename Reactor>
void ContextService::StoreOne(Reactor* reactor, grpc::CallbackServerContext* context,
                              ape::v1::CreateContextRequest request, ape::v1::Context* response,
                              absl::string_view method, absl::Time start) {
  auto channel = std::make_shared<BatchChannel>();
  // The one result: the stored context, or why it is not.
  auto result = std::make_shared<absl::StatusOr<ape::v1::Context>>(
      absl::InternalError("the store task sent no result"));
  RelayToUnary<Reactor, ape::v1::BatchCreateContextsResponse>(
      reactor, channel,
      [result](ape::v1::BatchCreateContextsResponse&& reply) {
        if (reply.has_error()) {
          *result = absl::Status(static_cast<absl::StatusCode>(reply.error().code()),
                                 reply.error().message());
        } else {
          *result = std::move(*reply.mutable_context());
        }
      },
      [this, result, response, method = std::string(method), start](const absl::Status& status) {
        const absl::Status outcome = status.ok() ? result->status() : status;
        if (outcome.ok()) *response = **result;
        return FinishCall(backend_, method, "", outcome, start,
                          outcome.ok() ? Summary(*response) : "");
      });
  std::vector<ape::v1::CreateContextRequest> one;
  one.push_back(std::move(request));
  if (absl::Status queued = backend_.scheduler.Submit(
          std::make_shared<IngestTask>(backend_, std::move(one), AliveCheckFor(context), channel));
      !queued.ok()) {
    channel->Close(queued);
  }
}

grpc::ServerUnaryReactor* ContextService::CreateContext(
    grpc::CallbackServerContext* context, const ape::v1::CreateContextRequest* request,
    ape::v1::Context* response) {
  const absl::Time start = absl::Now();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status allowed =
          backend_.auth.Check(*context, Role::kWrite, NamespaceOf(request->namespace_()));
      !allowed.ok()) {
    reactor->Finish(FinishCall(backend_, "CreateContext", "", allowed, start));
    return reactor;
  }
  StoreOne(reactor, context, *request, response, "CreateContext", start);
  return reactor;
}

// UploadContext: reads the metadata, then the text chunk by chunk (one read in flight),
// then stores the whole as CreateContext does.
class ContextService::Upload final : public grpc::ServerReadReactor<ape::v1::UploadContextRequest> {
 public:
  Upload(ContextService& service, grpc::CallbackServerContext* context, ape::v1::Context* response)
      : service_(service), context_(context), response_(response) {
    // Without a valid token the call ends before any text is read.
    if (absl::Status known = service_.backend_.auth.Check(*context_, Role::kWrite, std::nullopt);
        !known.ok()) {
      End(known);
      return;
    }
    StartRead(&message_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client's last message came
      Store();
      return;
    }
    if (!started_) {
      started_ = true;
      if (!message_.has_metadata()) {
        End(absl::InvalidArgumentError(
            "the first message of an upload must carry the metadata (and no text chunk)"));
        return;
      }
      request_ = std::move(*message_.mutable_metadata());
      if (absl::Status allowed = service_.backend_.auth.Check(*context_, Role::kWrite,
                                                              NamespaceOf(request_.namespace_()));
          !allowed.ok()) {
        End(allowed);
        return;
      }
      if (!request_.text().empty()) {
        End(absl::InvalidArgumentError(
            "metadata.text must be empty in an upload: send the text as text_chunk messages"));
        return;
      }
    } else {
      if (!message_.has_text_chunk()) {
        End(absl::InvalidArgumentError("only the first upload message may carry metadata"));
        return;
      }
      const size_t limit = service_.backend_.options.limits.max_context_bytes;
      if (text_.size() + message_.text_chunk().size() > limit) {
        End(absl::ResourceExhaustedError(absl::StrCat(
            "the upload passes ", limit, " bytes, this server's limit (--max_context_bytes)")));
        return;
      }
      text_ += message_.text_chunk();
    }
    StartRead(&message_);
  }

  void OnDone() override { delete this; }

 private:
  void Store() {
    if (!started_) {
      End(absl::InvalidArgumentError(
          "the first message of an upload must carry the metadata (and no text chunk)"));
      return;
    }
    if (context_->IsCancelled()) {
      End(absl::CancelledError("the upload was cancelled"));
      return;
    }
    if (!IsValidUtf8(text_)) {
      End(absl::InvalidArgumentError("the uploaded text is not valid UTF-8"));
      return;
    }
    request_.set_text(std::move(text_));
    service_.StoreOne(this, context_, std::move(request_), response_, "UploadContext", start_);
  }

  // Finishes the call with an error, before anything was queued.
  void End(const absl::Status& status) {
    Finish(FinishCall(service_.backend_, "UploadContext", "", status, start_));
  }

  ContextService& service_;
  grpc::CallbackServerContext* const context_;
  ape::v1::Context* const response_;
  const absl::Time start_ = absl::Now();
  ape::v1::UploadContextRequest message_;
  ape::v1::CreateContextRequest request_;
  std::string text_;
  bool started_ = false;
};

grpc::ServerReadReactor<ape::v1::UploadContextRequest>* ContextService::UploadContext(
    grpc::CallbackServerContext* context, ape::v1::Context* response) {
  return new Upload(*this, context, response);
}

grpc::ServerWriteReactor<ape::v1::BatchCreateContextsResponse>* ContextService::BatchCreateContexts(
    grpc::CallbackServerContext* context, const ape::v1::BatchCreateContextsRequest* request) {
  const absl::Time start = absl::Now();
  struct Counts {
    int done = 0;
    int failed = 0;
  };
  auto counts = std::make_shared<Counts>();
  auto channel = std::make_shared<BatchChannel>();
  auto* relay = StreamRelay<ape::v1::BatchCreateContextsResponse>::Start(
      channel,
      [counts](const ape::v1::BatchCreateContextsResponse& reply) {
        counts->done = reply.done();
        if (reply.has_error()) ++counts->failed;
      },
      [this, counts, start](const absl::Status& status) {
        return FinishCall(
            backend_, "BatchCreateContexts", "", status, start,
            status.ok() ? absl::StrCat("contexts=", counts->done, " failed=", counts->failed) : "");
      });
  const absl::Status checked = [&]() -> absl::Status {
    // The token first (an empty batch from a stranger is refused as such), then each
    // namespace the batch writes to, once.
    APE_RETURN_IF_ERROR(backend_.auth.Check(*context, Role::kWrite, std::nullopt));
    absl::flat_hash_set<std::string> namespaces;
    for (const ape::v1::CreateContextRequest& one : request->contexts()) {
      namespaces.insert(NamespaceOf(one.namespace_()));
    }
    for (const std::string& namespace_id : namespaces) {
      APE_RETURN_IF_ERROR(backend_.auth.Check(*context, Role::kWrite, namespace_id));
    }
    const int limit = backend_.options.limits.max_batch_contexts;
    if (request->contexts_size() == 0) {
      return absl::InvalidArgumentError("contexts is empty: nothing to store");
    }
    if (request->contexts_size() > limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("contexts has ", request->contexts_size(), " entries; at most ", limit,
                       " per call (--max_batch_contexts): split the batch"));
    }
    return backend_.scheduler.Submit(
        std::make_shared<IngestTask>(backend_,
                                     std::vector<ape::v1::CreateContextRequest>(
                                         request->contexts().begin(), request->contexts().end()),
                                     AliveCheckFor(context), channel));
  }();
  if (!checked.ok()) channel->Close(checked);
  return relay;
}

grpc::ServerUnaryReactor* ContextService::OnIoPool(grpc::CallbackServerContext* context,
                                                   std::function<grpc::Status()> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  backend_.io.Submit([reactor, work = std::move(work)] { reactor->Finish(work()); });
  return reactor;
}

grpc::ServerUnaryReactor* ContextService::GetContext(grpc::CallbackServerContext* context,
                                                     const ape::v1::GetContextRequest* request,
                                                     ape::v1::Context* response) {
  return OnIoPool(context, [=, this] { return Get(context, request, response); });
}

grpc::ServerUnaryReactor* ContextService::ListContexts(grpc::CallbackServerContext* context,
                                                       const ape::v1::ListContextsRequest* request,
                                                       ape::v1::ListContextsResponse* response) {
  return OnIoPool(context, [=, this] { return List(context, request, response); });
}

grpc::ServerUnaryReactor* ContextService::UpdateContext(
    grpc::CallbackServerContext* context, const ape::v1::UpdateContextRequest* request,
    ape::v1::Context* response) {
  return OnIoPool(context, [=, this] { return Update(context, request, response); });
}

grpc::ServerUnaryReactor* ContextService::DeleteContext(
    grpc::CallbackServerContext* context, const ape::v1::DeleteContextRequest* request,
    ape::v1::DeleteContextResponse* response) {
  return OnIoPool(context, [=, this] { return Delete(context, request, response); });
}

grpc::Status ContextService::Get(const grpc::ServerContextBase* context,
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

grpc::Status ContextService::List(const grpc::ServerContextBase* context,
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

grpc::Status ContextService::Update(const grpc::ServerContextBase* context,
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

grpc::Status ContextService::Delete(const grpc::ServerContextBase* context,
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
