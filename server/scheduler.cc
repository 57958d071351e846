#include "server/scheduler.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace apeserve::server {

model::Engine::StepInput Task::NextInput(size_t /*max_tokens*/) {
  Abort(absl::InternalError("a task that feeds nothing was asked for its input"));
  return {};
}

// By value in the interface: tasks take the logits over.
Task::Phase Task::Fed(
    absl::StatusOr<std::vector<float>> /*logits*/) {  // NOLINT(performance-unnecessary-value-param)
  Abort(absl::InternalError("a task that feeds nothing was given logits"));
  return Phase::kFinished;
}

void Task::Wake() {
  woken_.store(true, std::memory_order_release);
  if (scheduler_ != nullptr) scheduler_->Notify();
}

void Scheduler::Notify() {
  // Under the mutex: a scheduler about to sleep either sees the woken task or gets
  // this notification.
  std::lock_guard<std::mutex> lock(mutex_);
  work_.notify_all();
}

Scheduler::Scheduler(const model::Engine& engine, SchedulerOptions options)
    : engine_(engine), options_(options), kv_(options.max_running_kv_bytes) {
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() { Stop(); }

absl::Status Scheduler::Submit(std::shared_ptr<Task> task) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) return absl::UnavailableError("the server is shutting down");
  if (queue_.size() >= options_.max_queued) {
    return absl::ResourceExhaustedError(absl::StrCat("the server is busy: ", queue_.size(),
                                                     " requests are queued (the limit, ",
                                                     "--max_queued_requests); try again later"));
  }
  task->enqueued_ = absl::Now();
  task->scheduler_ = this;
  queue_.push_back(std::move(task));
  work_.notify_one();
  return absl::OkStatus();
}

namespace {

// How many of `tasks` encode documents for storage.
template <typename Tasks>
size_t CountIngesting(const Tasks& tasks) {
  return static_cast<size_t>(
      std::count_if(tasks.begin(), tasks.end(),
                    [](const std::shared_ptr<Task>& task) { return task->ingesting(); }));
}

}  // namespace

SchedulerLoad Scheduler::load() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {.queued = queue_.size(),
          .running = running_,
          .ingest_queued = CountIngesting(queue_),
          .ingesting = ingesting_,
          .encoded_tokens = encoded_tokens_,
          .running_kv_bytes = running_kv_bytes_,
          .stopping = stopping_,
          .steps = steps_,
          .stepped_sequences = stepped_sequences_};
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    work_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

void Scheduler::Publish(const Running& running) {
  std::lock_guard<std::mutex> lock(mutex_);
  running_ = running.size();
  ingesting_ = CountIngesting(running);
  encoded_tokens_ = tokens_encoded_;
  running_kv_bytes_ = kv_.used();
  steps_ = steps_taken_;
  stepped_sequences_ = sequences_stepped_;
}

bool Scheduler::Admit(Running& running) {
  std::vector<std::pair<std::shared_ptr<Task>, absl::Status>> dropped;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    // Nothing to do while every running task waits for storage (or none runs).
    const auto idle = [&running] {
      return std::all_of(running.begin(), running.end(), [](const std::shared_ptr<Task>& task) {
        return task->phase_ == Task::Phase::kWaiting &&
               !task->woken_.load(std::memory_order_acquire);
      });
    };
    if (idle()) work_.wait(lock, [&] { return stopping_ || !queue_.empty() || !idle(); });
    if (stopping_) return false;
    // Callers that went away while queued leave no work behind.
    for (auto it = queue_.begin(); it != queue_.end();) {
      absl::Status alive = (*it)->Alive();
      if (alive.ok()) {
        ++it;
        continue;
      }
      dropped.emplace_back(std::move(*it), std::move(alive));
      it = queue_.erase(it);
    }
    while (running.size() < options_.max_running && !queue_.empty()) {
      running.push_back(std::move(queue_.front()));
      queue_.pop_front();
      running.back()->started_ = absl::Now();
    }
    running_ = running.size();
  }
  // Outside the lock: aborting reports to the caller.
  for (auto& [task, status] : dropped) task->Abort(status);
  return true;
}

void Scheduler::Round(Running& running) {
  kv_.BeginRound();
  // In admission order, so that the KV budget goes first come, first served.
  for (const std::shared_ptr<Task>& task : running) {
    if (absl::Status alive = task->Alive(); !alive.ok()) {
      task->Abort(alive);
      task->phase_ = Task::Phase::kFinished;
    } else if (task->phase_ == Task::Phase::kWaiting) {
      // Its results are written before the flag: read after it.
      if (task->woken_.exchange(false, std::memory_order_acq_rel))
        task->phase_ = task->Prepare(kv_);
    } else if (task->phase_ == Task::Phase::kPreparing) {
      task->phase_ = task->Prepare(kv_);
    }
  }
  Step(running);
  // Counted out at once, not at the next admission: a caller that has its answer sees
  // the load without it.
  std::erase_if(running, [](const std::shared_ptr<Task>& task) {
    if (task->phase_ != Task::Phase::kFinished) return false;
    task->kv_ = {};  // here, on the budget's thread, whoever holds the task now
    return true;
  });
  Publish(running);
}

StepShares ShareStep(const SchedulerOptions& options, size_t decodes, bool prompts_wait,
                     bool ingests_wait) {
  StepShares shares;
  // Prompts get what the decodes leave of the step, and never less than a quarter of
  // it, so that no prompt starves behind a full batch of streams; with no stream
  // waiting, a prompt takes a whole prefill chunk.
  shares.prompt_tokens = options.max_prefill_chunk;
  if (decodes > 0) {
    shares.prompt_tokens =
        std::max(options.max_step_tokens - std::min(options.max_step_tokens, decodes),
                 std::max<size_t>(1, options.max_step_tokens / 4));
  }
  // Ingestion: at most its share of that while streams wait for their tokens, and at
  // least its share when prompts want tokens too.
  const size_t ingest_share =
      std::max<size_t>(1, static_cast<size_t>(static_cast<double>(shares.prompt_tokens) *
                                              std::clamp(options.ingest_share, 0.0, 1.0)));
  shares.ingest_most = decodes == 0 ? shares.prompt_tokens : ingest_share;
  shares.ingest_least = prompts_wait && ingests_wait ? ingest_share : 0;
  return shares;
}

void Scheduler::Step(Running& running) {
  // Decodes first, then prompts and documents being ingested, each in admission order.
  std::vector<Task*> decoding, prompts, ingests;
  for (const std::shared_ptr<Task>& task : running) {
    if (task->phase_ != Task::Phase::kFeeding) continue;
    (task->decoding() ? decoding : task->ingesting() ? ingests : prompts).push_back(task.get());
  }
  if (decoding.empty() && prompts.empty() && ingests.empty()) return;
  const StepShares shares =
      ShareStep(options_, decoding.size(), !prompts.empty(), !ingests.empty());
  std::vector<Task*> fed;
  std::vector<model::Engine::StepInput> inputs;
  for (Task* task : decoding) {
    inputs.push_back(task->NextInput(1));
    fed.push_back(task);
  }
  size_t query_budget = shares.prompt_tokens - shares.ingest_least;
  for (Task* task : prompts) {
    if (query_budget == 0) break;
    inputs.push_back(task->NextInput(query_budget));
    fed.push_back(task);
    query_budget -= std::min(query_budget, inputs.back().tokens.size());
  }
  // What the prompts left, within ingestion's cap.
  size_t ingest_budget = std::min(shares.ingest_most, shares.ingest_least + query_budget);
  for (Task* task : ingests) {
    if (ingest_budget == 0) break;
    inputs.push_back(task->NextInput(ingest_budget));
    fed.push_back(task);
    ingest_budget -= std::min(ingest_budget, inputs.back().tokens.size());
    tokens_encoded_ += inputs.back().tokens.size();
  }
  if (inputs.empty()) return;
  ++steps_taken_;
  sequences_stepped_ += inputs.size();
  absl::StatusOr<std::vector<std::vector<float>>> logits = engine_.Step(inputs);
  if (logits.ok()) {
    for (size_t i = 0; i < fed.size(); ++i) fed[i]->phase_ = fed[i]->Fed(std::move((*logits)[i]));
    return;
  }
  if (fed.size() == 1) {
    fed[0]->phase_ = fed[0]->Fed(logits.status());
    return;
  }
  // A failed step leaves every sequence as it was: step each alone, so that one bad
  // input (or one too large for memory) fails only its own request.
  for (size_t i = 0; i < fed.size(); ++i) {
    absl::StatusOr<std::vector<std::vector<float>>> alone = engine_.Step({inputs[i]});
    fed[i]->phase_ =
        fed[i]->Fed(alone.ok() ? absl::StatusOr<std::vector<float>>(std::move(alone->front()))
                               : alone.status());
  }
}

void Scheduler::Loop() {
  Running running;
  while (Admit(running)) Round(running);
  const absl::Status stopping = absl::UnavailableError("the server is shutting down");
  for (const std::shared_ptr<Task>& task : running) {
    task->Abort(stopping);
    task->kv_ = {};
  }
  std::deque<std::shared_ptr<Task>> queued;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queued.swap(queue_);
    running_ = 0;
  }
  for (const std::shared_ptr<Task>& task : queued) task->Abort(stopping);
  running.clear();
  Publish(running);
}

}  // namespace apeserve::server
