#include "server/query_task.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cache/stored_context.h"
#include "common/status_macros.h"
#include "model/scorer.h"

namespace apeserve::server {
namespace {

ape::v1::FinishReason ToProto(model::FinishReason reason) {
  switch (reason) {
    case model::FinishReason::kLength:
      return ape::v1::FINISH_REASON_LENGTH;
    case model::FinishReason::kEndOfSequence:
      return ape::v1::FINISH_REASON_END_OF_SEQUENCE;
    case model::FinishReason::kStop:
      return ape::v1::FINISH_REASON_STOP;
    case model::FinishReason::kCancelled:
      break;
  }
  return ape::v1::FINISH_REASON_UNSPECIFIED;
}

bool IsCallerGone(const absl::Status& status) {
  return status.code() == absl::StatusCode::kCancelled ||
         status.code() == absl::StatusCode::kDeadlineExceeded;
}

}  // namespace

QueryTask::QueryTask(const Backend& backend, QueryPlan plan, AliveCheck alive)
    : backend_(backend), plan_(std::move(plan)), alive_(std::move(alive)) {}

bool QueryTask::Step() {
  if (absl::Status alive = alive_(); !alive.ok()) {
    Fail(alive);
    return true;
  }
  absl::StatusOr<bool> done = [this]() -> absl::StatusOr<bool> {
    switch (stage_) {
      case Stage::kPrepare:
        timings_.set_queue_ms(absl::ToDoubleMilliseconds(started() - enqueued()));
        APE_RETURN_IF_ERROR(Prepare());
        stage_ = plan_.contexts.empty() ? Stage::kStart : Stage::kContexts;
        return false;
      case Stage::kContexts:
        APE_RETURN_IF_ERROR(LoadNextContext());
        if (next_context_ == plan_.contexts.size()) stage_ = Stage::kStart;
        return false;
      case Stage::kStart:
        APE_RETURN_IF_ERROR(StartSequence());
        stage_ = Stage::kAnswer;
        return false;
      case Stage::kAnswer:
        return Answer();
    }
    return absl::InternalError("unknown stage");
  }();
  if (!done.ok()) {
    Fail(done.status());
    return true;
  }
  return *done;
}

void QueryTask::Abort(const absl::Status& status) { Fail(status); }

absl::Status QueryTask::Prepare() {
  const int64_t limit = backend_.options.limits.max_query_tokens;
  if (const size_t system = backend_.engine.tokenizer().Encode(plan_.system_prompt).size();
      static_cast<int64_t>(system) > limit) {
    return absl::ResourceExhaustedError(absl::StrCat("the system prompt has ", system,
                                                     " tokens; this server takes at most ", limit,
                                                     " (--max_query_tokens)"));
  }
  APE_ASSIGN_OR_RETURN(prefix_, backend_.prefixes.Get(plan_.system_prompt));
  query_tokens_ = backend_.pieces.Query(plan_.query);
  for (const std::string& continuation : plan_.continuations) {
    continuation_tokens_.push_back(backend_.engine.tokenizer().Encode(continuation));
  }
  if (static_cast<int64_t>(query_tokens_.size()) > limit) {
    return absl::ResourceExhaustedError(absl::StrCat("the query has ", query_tokens_.size(),
                                                     " tokens; this server takes at most ", limit,
                                                     " (--max_query_tokens)"));
  }
  usage_.set_prefix_tokens(static_cast<int32_t>(prefix_->tokens.size()));
  usage_.set_query_tokens(static_cast<int32_t>(query_tokens_.size()));
  return absl::OkStatus();
}

absl::Status QueryTask::LoadNextContext() {
  const absl::Time start = absl::Now();
  const QueryContext& context = plan_.contexts[next_context_];
  const bool sequential = plan_.ape.mode == model::EncodingMode::kSequential;
  // SEQUENTIAL recomputes every context from its tokens: no KV is needed.
  const auto tokens_only = [&](std::vector<int32_t> tokens) {
    return std::make_shared<const model::EncodedContext>(
        model::EncodedContext{.tokens = std::move(tokens), .prefix_hash = prefix_->hash, .kv = {}});
  };
  std::shared_ptr<const model::EncodedContext> loaded;
  cache::KvSource source = cache::KvSource::kRebuilt;
  if (!context.is_inline) {
    if (sequential) {
      absl::StatusOr<cache::StoredContext> document =
          backend_.registry.Get(plan_.namespace_id, context.id);
      if (absl::IsNotFound(document.status())) return Missing(document.status());
      APE_RETURN_IF_ERROR(document.status());
      loaded = tokens_only(std::move(document->tokens));
    } else {
      absl::StatusOr<cache::LoadedContext> stored =
          backend_.registry.Load(plan_.namespace_id, context.id, prefix_->hash);
      if (absl::IsNotFound(stored.status())) return Missing(stored.status());
      APE_RETURN_IF_ERROR(stored.status());
      loaded = std::move(stored->context);
      source = stored->source;
    }
  } else {
    std::vector<int32_t> tokens = backend_.pieces.Context(context.text);
    const int64_t limit = backend_.options.limits.max_context_tokens;
    if (limit > 0 && static_cast<int64_t>(tokens.size()) > limit) {
      return absl::ResourceExhaustedError(
          absl::StrCat("context #", next_context_, " (inline) has ", tokens.size(),
                       " tokens; this server takes at most ", limit, " (--max_context_tokens)"));
    }
    const int64_t room =
        backend_.engine.config().max_position - static_cast<int64_t>(prefix_->tokens.size()) - 1;
    if (static_cast<int64_t>(tokens.size()) > room) {
      return absl::OutOfRangeError(absl::StrCat(
          "context #", next_context_, " (inline) has ", tokens.size(),
          " tokens; after the prefix (", prefix_->tokens.size(), ") the model's context of ",
          backend_.engine.config().max_position, " holds ", room, ": split the document"));
    }
    std::optional<model::EncodedContext> encoded;
    if (!sequential || context.store) {
      APE_ASSIGN_OR_RETURN(encoded, backend_.engine.EncodeContext(*prefix_, tokens));
    }
    if (context.store) {
      // Stored once the prompt is known to fit (StartSequence): a refused request
      // leaves nothing behind.
      to_store_.push_back({.context = &context, .tokens = tokens, .kv = encoded->kv});
    }
    loaded = sequential ? tokens_only(std::move(tokens))
                        : std::make_shared<const model::EncodedContext>(*std::move(encoded));
  }
  if (sequential) source = cache::KvSource::kRebuilt;
  const auto length = static_cast<int32_t>(loaded->tokens.size());
  usage_.set_context_tokens(usage_.context_tokens() + length);
  switch (source) {
    case cache::KvSource::kDevice:
      usage_.set_context_tokens_device(usage_.context_tokens_device() + length);
      backend_.counters.context_tokens_device += length;
      break;
    case cache::KvSource::kHost:
      usage_.set_context_tokens_host(usage_.context_tokens_host() + length);
      backend_.counters.context_tokens_host += length;
      break;
    case cache::KvSource::kStore:
      usage_.set_context_tokens_store(usage_.context_tokens_store() + length);
      backend_.counters.context_tokens_store += length;
      break;
    case cache::KvSource::kRebuilt:
      usage_.set_context_tokens_recomputed(usage_.context_tokens_recomputed() + length);
      backend_.counters.context_tokens_recomputed += length;
      break;
  }
  contexts_.push_back(std::move(loaded));
  ++next_context_;
  timings_.set_kv_load_ms(timings_.kv_load_ms() + MillisecondsSince(start));
  return absl::OkStatus();
}

absl::Status QueryTask::Missing(const absl::Status& first) {
  std::vector<std::string> missing;
  for (size_t i = next_context_; i < plan_.contexts.size(); ++i) {
    const QueryContext& context = plan_.contexts[i];
    if (context.is_inline) continue;
    const absl::StatusOr<cache::StoredContext> document =
        backend_.registry.Get(plan_.namespace_id, context.id);
    if (absl::IsNotFound(document.status())) missing.push_back(absl::CHexEscape(context.id));
  }
  if (missing.empty()) return first;  // gone and back meanwhile: report what we saw
  return absl::NotFoundError(absl::StrCat("no context ", absl::StrJoin(missing, ", "),
                                          " in namespace '", plan_.namespace_id, "'"));
}

absl::Status QueryTask::StartSequence() {
  const absl::Time start = absl::Now();
  const bool sequential = plan_.ape.mode == model::EncodingMode::kSequential;
  int64_t total = 0, longest = 0;
  for (const auto& context : contexts_) {
    total += static_cast<int64_t>(context->tokens.size());
    longest = std::max(longest, static_cast<int64_t>(context->tokens.size()));
  }
  size_t answer_tokens = 1;  // room for at least one generated token
  for (const std::vector<int32_t>& continuation : continuation_tokens_) {
    answer_tokens = std::max(answer_tokens, continuation.size());
  }
  const int64_t prompt = static_cast<int64_t>(prefix_->tokens.size()) +
                         (sequential ? total : longest) +
                         static_cast<int64_t>(query_tokens_.size());
  usage_.set_prompt_tokens(static_cast<int32_t>(prompt));
  const int64_t window = backend_.engine.config().max_position;
  if (prompt + static_cast<int64_t>(answer_tokens) > window) {
    return absl::OutOfRangeError(absl::StrCat(
        "the prompt takes ", prompt, " positions (prefix ", prefix_->tokens.size(), ", contexts ",
        sequential ? total : longest, sequential ? " one after the other" : " side by side", " in ",
        model::EncodingModeName(plan_.ape.mode), " mode, query ", query_tokens_.size(), ") and ",
        answer_tokens, " more are needed for the answer; the model's context is ", window,
        " tokens"));
  }
  std::vector<const model::EncodedContext*> pointers;
  pointers.reserve(contexts_.size());
  for (const auto& context : contexts_) pointers.push_back(context.get());
  APE_ASSIGN_OR_RETURN(sequence_, backend_.engine.StartSequence(*prefix_, pointers, plan_.ape));
  // The sequence holds its own copy of the KV now.
  contexts_.clear();
  for (const InlineToStore& inline_context : to_store_) {
    const QueryContext& context = *inline_context.context;
    APE_RETURN_IF_ERROR(backend_.registry
                            .Put({.namespace_id = plan_.namespace_id,
                                  .id = context.id,
                                  .tokens = inline_context.tokens,
                                  .text = context.text,
                                  .labels = context.labels},
                                 prefix_->hash, &inline_context.kv)
                            .status());
    stored_context_ids_.push_back(context.id);
  }
  to_store_.clear();
  timings_.set_prefill_ms(MillisecondsSince(start));
  return absl::OkStatus();
}

GenerateTask::GenerateTask(const Backend& backend, QueryPlan plan, AliveCheck alive,
                           std::shared_ptr<ReplyChannel<ape::v1::GenerateStreamResponse>> replies)
    : QueryTask(backend, std::move(plan), std::move(alive)), replies_(std::move(replies)) {}

absl::StatusOr<bool> GenerateTask::Answer() {
  const model::Engine& engine = backend_.engine;
  if (!generator_.has_value()) {
    const absl::Time start = absl::Now();
    APE_ASSIGN_OR_RETURN(logits_, engine.Feed(*sequence_, query_tokens_));
    timings_.set_prefill_ms(timings_.prefill_ms() + MillisecondsSince(start));
    generator_.emplace(engine.tokenizer(), plan_.sampling, query_tokens_);
  } else {
    absl::StatusOr<std::vector<float>> logits =
        engine.Feed(*sequence_, {generator_->tokens().back()});
    if (absl::IsOutOfRange(logits.status())) {  // the model's context is full
      if (std::string rest = generator_->Finish(); !rest.empty()) {
        ape::v1::GenerateStreamResponse chunk;
        chunk.set_request_id(plan_.request_id);
        chunk.set_text(std::move(rest));
        replies_->Send(std::move(chunk));
      }
      Finish(model::FinishReason::kLength);
      return true;
    }
    APE_RETURN_IF_ERROR(logits.status());
    logits_ = *std::move(logits);
  }
  const model::TokenGenerator::Step step = generator_->Next(logits_);
  if (generator_->tokens().size() == 1) {
    first_token_ = absl::Now();
    timings_.set_time_to_first_token_ms(absl::ToDoubleMilliseconds(first_token_ - enqueued()));
    backend_.counters.ObserveTimeToFirstToken(model::EncodingModeName(plan_.ape.mode),
                                              timings_.time_to_first_token_ms() / 1000);
  }
  ape::v1::GenerateStreamResponse chunk;
  chunk.set_request_id(plan_.request_id);
  chunk.set_text(step.text);
  chunk.add_token_ids(step.token);
  ape::v1::TokenLogprob* logprob = chunk.add_logprobs();
  logprob->set_token_id(step.token);
  logprob->set_logprob(step.logprob);
  if (plan_.top_logprobs > 0) {
    const std::vector<float> all = model::LogSoftmax(logits_);
    std::vector<int32_t> ids(all.size());
    std::iota(ids.begin(), ids.end(), 0);
    const auto k = std::min<size_t>(plan_.top_logprobs, ids.size());
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(),
                      [&](int32_t a, int32_t b) { return all[a] > all[b]; });
    for (size_t i = 0; i < k; ++i) {
      ape::v1::TopLogprob* top = logprob->add_top();
      top->set_token_id(ids[i]);
      top->set_text(engine.tokenizer().Decode({ids[i]}));
      top->set_logprob(all[ids[i]]);
    }
  }
  replies_->Send(std::move(chunk));
  ++backend_.counters.generated_tokens;
  if (step.finished) {
    Finish(step.finish_reason);
    return true;
  }
  return false;
}

void GenerateTask::Finish(model::FinishReason reason) {
  const size_t generated = generator_->tokens().size();
  usage_.set_generated_tokens(static_cast<int32_t>(generated));
  const double decoding = absl::ToDoubleSeconds(absl::Now() - first_token_);
  timings_.set_decode_tokens_per_second(
      generated > 1 && decoding > 0 ? static_cast<double>(generated - 1) / decoding : 0);
  timings_.set_total_ms(MillisecondsSince(enqueued()));
  ape::v1::GenerateStreamResponse last;
  last.set_request_id(plan_.request_id);
  ape::v1::StreamEnd* end = last.mutable_end();
  end->set_finish_reason(ToProto(reason));
  *end->mutable_usage() = usage_;
  *end->mutable_timings() = timings_;
  end->mutable_stored_context_ids()->Add(stored_context_ids_.begin(), stored_context_ids_.end());
  replies_->Send(std::move(last));
  replies_->Close(absl::OkStatus());
}

void GenerateTask::Fail(const absl::Status& status) {
  if (IsCallerGone(status)) ++backend_.counters.cancelled_generations;
  replies_->Close(status);
}

ScoreTask::ScoreTask(const Backend& backend, QueryPlan plan, AliveCheck alive,
                     std::shared_ptr<ReplyChannel<ape::v1::ScoreResponse>> replies)
    : QueryTask(backend, std::move(plan), std::move(alive)), replies_(std::move(replies)) {}

absl::StatusOr<bool> ScoreTask::Answer() {
  const size_t index = static_cast<size_t>(response_.scores_size());
  if (index == 0) start_length_ = sequence_->length();
  sequence_->Truncate(start_length_);
  const absl::Time start = absl::Now();
  const std::vector<int32_t>& continuation = continuation_tokens_[index];
  APE_ASSIGN_OR_RETURN(const model::ScoreResult result,
                       model::Score(backend_.engine, *sequence_, query_tokens_, continuation));
  timings_.set_prefill_ms(timings_.prefill_ms() + MillisecondsSince(start));
  ape::v1::ContinuationScore* score = response_.add_scores();
  score->mutable_token_ids()->Add(continuation.begin(), continuation.end());
  score->mutable_token_logprobs()->Add(result.token_logprobs.begin(), result.token_logprobs.end());
  score->set_total_logprob(result.total_logprob);
  score->set_greedy(
      std::all_of(result.greedy.begin(), result.greedy.end(), [](bool b) { return b; }));
  usage_.set_generated_tokens(usage_.generated_tokens() +
                              static_cast<int32_t>(continuation.size()));
  backend_.counters.generated_tokens += static_cast<int64_t>(continuation.size());
  if (static_cast<size_t>(response_.scores_size()) < plan_.continuations.size()) return false;
  response_.set_request_id(plan_.request_id);
  timings_.set_total_ms(MillisecondsSince(enqueued()));
  *response_.mutable_usage() = usage_;
  *response_.mutable_timings() = timings_;
  response_.mutable_stored_context_ids()->Add(stored_context_ids_.begin(),
                                              stored_context_ids_.end());
  replies_->Send(std::move(response_));
  replies_->Close(absl::OkStatus());
  return true;
}

void ScoreTask::Fail(const absl::Status& status) { replies_->Close(status); }

}  // namespace apeserve::server
