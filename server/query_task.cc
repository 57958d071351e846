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

// A context SEQUENTIAL reads: its tokens, which it recomputes after the prefix; no KV.
std::shared_ptr<const model::EncodedContext> TokensOnly(std::vector<int32_t> tokens,
                                                        const std::string& prefix_hash) {
  return std::make_shared<const model::EncodedContext>(
      model::EncodedContext{.tokens = std::move(tokens), .prefix_hash = prefix_hash, .kv = {}});
}

bool IsCallerGone(const absl::Status& status) {
  return status.code() == absl::StatusCode::kCancelled ||
         status.code() == absl::StatusCode::kDeadlineExceeded;
}

}  // namespace

QueryTask::QueryTask(const Backend& backend, QueryPlan plan, AliveCheck alive)
    : backend_(backend), plan_(std::move(plan)), alive_(std::move(alive)) {}

Task::Phase QueryTask::Prepare(KvBudget& kv) {
  if (stage_ == Stage::kStoring) {  // woken: the inline contexts are stored, or not
    if (!inline_stored_.ok()) {
      Fail(inline_stored_);
      return Phase::kFinished;
    }
    timings_.set_kv_load_ms(timings_.kv_load_ms() + MillisecondsSince(sequence_started_));
    sequence_started_ = absl::Now();
    return Phase::kFeeding;
  }
  // Loading is cheap next to a step, but a request may name hundreds of contexts:
  // load for a slice of time each round, so that the batch's streams never wait long.
  constexpr absl::Duration kSlice = absl::Milliseconds(20);
  const absl::Time start = absl::Now();
  bool waits = false;
  const absl::Status prepared = [&]() -> absl::Status {
    if (stage_ == Stage::kPrefix) {
      timings_.set_queue_ms(absl::ToDoubleMilliseconds(started() - enqueued()));
      APE_RETURN_IF_ERROR(LoadPrefix());
      stage_ = Stage::kContexts;
      // The stored contexts come from the registry on the I/O pool (a tier in memory,
      // else RocksDB): the steps go on meanwhile.
      if (std::any_of(plan_.contexts.begin(), plan_.contexts.end(),
                      [](const QueryContext& context) { return !context.is_inline; })) {
        FetchStoredContexts();
        waits = true;
        return absl::OkStatus();
      }
    }
    while (stage_ == Stage::kContexts && next_context_ < plan_.contexts.size()) {
      if (absl::Now() - start > kSlice) return absl::OkStatus();
      APE_RETURN_IF_ERROR(LoadNextContext());
    }
    if (stage_ == Stage::kContexts) stage_ = Stage::kStart;
    return absl::OkStatus();
  }();
  if (!prepared.ok()) {
    Fail(prepared);
    return Phase::kFinished;
  }
  if (waits) return Phase::kWaiting;
  if (stage_ != Stage::kStart) return Phase::kPreparing;
  const absl::StatusOr<bool> started = StartSequence(kv);
  if (!started.ok()) {
    Fail(started.status());
    return Phase::kFinished;
  }
  if (!*started) return Phase::kPreparing;
  if (to_store_.empty()) return Phase::kFeeding;
  // Stored once the prompt is known to fit (a refused request leaves nothing behind),
  // on the I/O pool; the prompt waits for it, the other requests' steps do not.
  stage_ = Stage::kStoring;
  StoreInlineContexts();
  return Phase::kWaiting;
}

void QueryTask::StoreInlineContexts() {
  backend_.io.Submit([task = shared_from_this()] {
    task->inline_stored_ = [&]() -> absl::Status {
      for (const InlineToStore& inline_context : task->to_store_) {
        const QueryContext& context = *inline_context.context;
        APE_RETURN_IF_ERROR(task->backend_.registry
                                .Put({.namespace_id = task->plan_.namespace_id,
                                      .id = context.id,
                                      .tokens = inline_context.encoded->tokens,
                                      .text = context.text,
                                      .labels = context.labels},
                                     task->prefix_->hash, &inline_context.encoded->kv)
                                .status());
        task->stored_context_ids_.push_back(context.id);
      }
      return absl::OkStatus();
    }();
    task->to_store_.clear();
    task->Wake();
  });
}

void QueryTask::FetchStoredContexts() {
  fetched_.resize(plan_.contexts.size());
  fetch_started_ = absl::Now();
  backend_.io.Submit([task = shared_from_this()] {
    const bool sequential = task->plan_.ape.mode == model::EncodingMode::kSequential;
    for (size_t i = 0; i < task->plan_.contexts.size(); ++i) {
      const QueryContext& context = task->plan_.contexts[i];
      if (context.is_inline) continue;
      if (sequential) {
        // SEQUENTIAL recomputes every context from its tokens: no KV is needed.
        absl::StatusOr<cache::StoredContext> document =
            task->backend_.registry.Get(task->plan_.namespace_id, context.id);
        if (!document.ok()) {
          task->fetched_[i] = document.status();
        } else {
          task->fetched_[i] = cache::LoadedContext{
              .context = TokensOnly(std::move(document->tokens), task->prefix_->hash),
              .source = cache::KvSource::kRebuilt};
        }
      } else {
        task->fetched_[i] =
            task->backend_.registry.Load(task->plan_.namespace_id, context.id, task->prefix_->hash);
      }
      // The first error ends the request: the rest need not be read.
      if (!task->fetched_[i].ok()) break;
    }
    task->Wake();
  });
}

absl::Status QueryTask::LoadPrefix() {
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
    if (continuation_tokens_.back().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("continuations[", continuation_tokens_.size() - 1, "] has no tokens"));
    }
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
  std::shared_ptr<const model::EncodedContext> loaded;
  cache::KvSource source = cache::KvSource::kRebuilt;
  if (!context.is_inline) {
    absl::StatusOr<cache::LoadedContext>& fetched = fetched_[next_context_];
    if (absl::IsNotFound(fetched.status())) return Missing(fetched.status());
    APE_RETURN_IF_ERROR(fetched.status());
    loaded = std::move(fetched->context);
    source = fetched->source;
    if (!fetch_timed_) {
      // Reading them (and waiting for the I/O pool) is loading too.
      timings_.set_kv_load_ms(timings_.kv_load_ms() + MillisecondsSince(fetch_started_));
      fetch_timed_ = true;
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
    std::shared_ptr<const model::EncodedContext> encoded;
    if (!sequential || context.store) {
      APE_ASSIGN_OR_RETURN(model::EncodedContext computed,
                           backend_.engine.EncodeContext(*prefix_, tokens));
      encoded = std::make_shared<const model::EncodedContext>(std::move(computed));
    }
    if (context.store) {
      // Stored once the prompt is known to fit (Prepare): a refused request leaves
      // nothing behind.
      to_store_.push_back({.context = &context, .encoded = encoded});
    }
    loaded = sequential ? TokensOnly(std::move(tokens), prefix_->hash) : std::move(encoded);
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

absl::StatusOr<bool> QueryTask::StartSequence(KvBudget& kv) {
  const absl::Time start = absl::Now();
  const bool sequential = plan_.ape.mode == model::EncodingMode::kSequential;
  int64_t total = 0, longest = 0;
  for (const auto& context : contexts_) {
    total += static_cast<int64_t>(context->tokens.size());
    longest = std::max(longest, static_cast<int64_t>(context->tokens.size()));
  }
  // Generation needs room for one token at least (it stops at the window's end);
  // Score for its longest continuation.
  int64_t longest_continuation = 0;
  for (const std::vector<int32_t>& continuation : continuation_tokens_) {
    longest_continuation =
        std::max(longest_continuation, static_cast<int64_t>(continuation.size()));
  }
  const bool scoring = !continuation_tokens_.empty();
  const int64_t answer_tokens = scoring ? longest_continuation : 1;
  const auto prefix_length = static_cast<int64_t>(prefix_->tokens.size());
  const auto query_length = static_cast<int64_t>(query_tokens_.size());
  const int64_t prompt = prefix_length + (sequential ? total : longest) + query_length;
  usage_.set_prompt_tokens(static_cast<int32_t>(prompt));
  const int64_t window = backend_.engine.config().max_position;
  if (prompt + answer_tokens > window) {
    return absl::OutOfRangeError(absl::StrCat(
        "the prompt takes ", prompt, " positions (prefix ", prefix_->tokens.size(), ", contexts ",
        sequential ? total : longest, sequential ? " one after the other" : " side by side", " in ",
        model::EncodingModeName(plan_.ape.mode), " mode, query ", query_tokens_.size(), ") and ",
        answer_tokens, " more are needed for the answer; the model's context is ", window,
        " tokens"));
  }
  // The sequence holds the query and the answer, as far as the window lets it grow. In
  // SEQUENTIAL mode it computes the prefix and the contexts too; otherwise it reads their
  // KV where it lies, shared with every request that reads the same (counted once).
  const int64_t answer_room = std::min<int64_t>(
      scoring ? longest_continuation : plan_.sampling.max_tokens, window - prompt);
  const size_t per_token = backend_.engine.kv_bytes_per_token();
  int64_t own_tokens = query_length + answer_room;
  std::vector<KvBudget::Shared> shared;
  if (sequential) {
    own_tokens += prefix_length + total;
  } else {
    if (backend_.engine.ReadsInPlace(prefix_->kv)) {
      shared.push_back(
          {.key = prefix_.get(), .bytes = static_cast<size_t>(prefix_length) * per_token});
    } else {
      own_tokens += prefix_length;
    }
    for (const auto& context : contexts_) {
      const auto length = static_cast<int64_t>(context->tokens.size());
      if (backend_.engine.ReadsInPlace(*context)) {
        shared.push_back({.key = context.get(), .bytes = static_cast<size_t>(length) * per_token});
      } else {
        own_tokens += length;  // converted for this sequence alone
      }
    }
  }
  APE_ASSIGN_OR_RETURN(std::optional<KvBudget::Reservation> reservation,
                       kv.Reserve(static_cast<size_t>(own_tokens) * per_token, shared));
  if (!reservation.has_value()) return false;  // waits for running requests to finish
  HoldKv(*std::move(reservation));

  APE_ASSIGN_OR_RETURN(model::Engine::SequenceStart begun,
                       backend_.engine.BeginSequence(prefix_, contexts_, plan_.ape));
  sequence_ = std::move(begun.sequence);
  sequence_->Reserve(prefix_length + total + query_length + answer_room);
  // The sequence holds what it reads in place (the budget's shared keys stay valid
  // while it lives) and its own converted copies.
  contexts_.clear();
  prompt_ = std::move(begun.tokens_to_feed);
  prompt_.insert(prompt_.end(), query_tokens_.begin(),
                 query_tokens_.end() - static_cast<std::ptrdiff_t>(query_tokens_held_back_));
  // Putting the contexts' KV in place for this sequence (and storing inline contexts)
  // is part of loading it; the prefill from here is the prompt's own.
  timings_.set_kv_load_ms(timings_.kv_load_ms() + MillisecondsSince(start));
  sequence_started_ = absl::Now();
  return true;
}

model::Engine::StepInput QueryTask::PromptChunk(size_t max_tokens,
                                                model::Engine::Logits last_logits) {
  prompt_chunk_ = std::min(max_tokens, prompt_.size() - prompt_done_);
  const bool last = prompt_done_ + prompt_chunk_ == prompt_.size();
  return {.sequence = sequence_.get(),
          .tokens = absl::MakeConstSpan(prompt_).subspan(prompt_done_, prompt_chunk_),
          .logits = last ? last_logits : model::Engine::Logits::kNone};
}

bool QueryTask::PromptChunkFed() {
  prompt_done_ += std::exchange(prompt_chunk_, 0);
  return prompt_fed();
}

GenerateTask::GenerateTask(const Backend& backend, QueryPlan plan, AliveCheck alive,
                           std::shared_ptr<ReplyChannel<ape::v1::GenerateStreamResponse>> replies)
    : QueryTask(backend, std::move(plan), std::move(alive)), replies_(std::move(replies)) {}

model::Engine::StepInput GenerateTask::NextInput(size_t max_tokens) {
  if (!generator_.has_value()) return PromptChunk(max_tokens, model::Engine::Logits::kLast);
  return {.sequence = sequence_.get(),
          .tokens = absl::MakeConstSpan(&generator_->tokens().back(), 1),
          .logits = model::Engine::Logits::kLast};
}

Task::Phase GenerateTask::Fed(absl::StatusOr<std::vector<float>> logits) {
  if (!logits.ok()) {
    Fail(logits.status());
    return Phase::kFinished;
  }
  if (!generator_.has_value()) {
    if (!PromptChunkFed()) return Phase::kFeeding;
    timings_.set_prefill_ms(MillisecondsSince(sequence_started_));
    generator_.emplace(backend_.engine.tokenizer(), plan_.sampling, query_tokens_);
  }
  if (Emit(*logits)) return Phase::kFinished;
  if (sequence_->next_position() >= backend_.engine.config().max_position) {
    // The model's context is full: the answer ends here, held-back text released.
    if (std::string rest = generator_->Finish(); !rest.empty()) {
      ape::v1::GenerateStreamResponse chunk;
      chunk.set_request_id(plan_.request_id);
      chunk.set_text(std::move(rest));
      replies_->Send(std::move(chunk));
    }
    Finish(model::FinishReason::kLength);
    return Phase::kFinished;
  }
  return Phase::kFeeding;
}

bool GenerateTask::Emit(const std::vector<float>& logits) {
  const model::Engine& engine = backend_.engine;
  const model::TokenGenerator::Step step = generator_->Next(logits);
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
    const std::vector<float> all = model::LogSoftmax(logits);
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
  if (!step.finished) return false;
  Finish(step.finish_reason);
  return true;
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
    : QueryTask(backend, std::move(plan), std::move(alive)), replies_(std::move(replies)) {
  query_tokens_held_back_ = 1;
}

model::Engine::StepInput ScoreTask::NextInput(size_t max_tokens) {
  if (!prompt_fed()) return PromptChunk(max_tokens, model::Engine::Logits::kNone);
  if (feeding_.empty()) {
    // The next continuation, after the prompt: the query's last token predicts its
    // first token, and its last token predicts nothing we score.
    if (response_.scores_size() == 0) start_length_ = sequence_->length();
    sequence_->Truncate(start_length_);
    const std::vector<int32_t>& continuation =
        continuation_tokens_[static_cast<size_t>(response_.scores_size())];
    feeding_.push_back(query_tokens_.back());
    feeding_.insert(feeding_.end(), continuation.begin(), continuation.end() - 1);
    feeding_done_ = 0;
    rows_.clear();
  }
  feeding_chunk_ = std::min(max_tokens, feeding_.size() - feeding_done_);
  return {.sequence = sequence_.get(),
          .tokens = absl::MakeConstSpan(feeding_).subspan(feeding_done_, feeding_chunk_),
          .logits = model::Engine::Logits::kAll};
}

Task::Phase ScoreTask::Fed(absl::StatusOr<std::vector<float>> logits) {
  if (!logits.ok()) {
    Fail(logits.status());
    return Phase::kFinished;
  }
  if (!prompt_fed()) {
    PromptChunkFed();
    return Phase::kFeeding;
  }
  rows_.insert(rows_.end(), logits->begin(), logits->end());
  feeding_done_ += std::exchange(feeding_chunk_, 0);
  if (feeding_done_ < feeding_.size()) return Phase::kFeeding;
  feeding_.clear();
  return ScoreContinuation() ? Phase::kFinished : Phase::kFeeding;
}

bool ScoreTask::ScoreContinuation() {
  const std::vector<int32_t>& continuation =
      continuation_tokens_[static_cast<size_t>(response_.scores_size())];
  const model::ScoreResult result = model::ScoreFromLogits(
      rows_, static_cast<size_t>(backend_.engine.config().vocab_size), continuation);
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
  timings_.set_prefill_ms(MillisecondsSince(sequence_started_));
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
