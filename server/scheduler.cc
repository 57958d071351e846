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
  queue_.push_back(std::move(task));
  work_.notify_one();
  return absl::OkStatus();
}

SchedulerLoad Scheduler::load() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {.queued = queue_.size(),
          .running = running_,
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
  running_kv_bytes_ = kv_.used();
  steps_ = steps_taken_;
  stepped_sequences_ = sequences_stepped_;
}

bool Scheduler::Admit(Running& running) {
  std::vector<std::pair<std::shared_ptr<Task>, absl::Status>> dropped;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (running.empty()) {
      work_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    }
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

void Scheduler::Step(Running& running) {
  // Decodes first, then prompts, each in admission order.
  std::vector<Task*> decoding, prompts;
  for (const std::shared_ptr<Task>& task : running) {
    if (task->phase_ != Task::Phase::kFeeding) continue;
    (task->decoding() ? decoding : prompts).push_back(task.get());
  }
  if (decoding.empty() && prompts.empty()) return;
  // Prompts get what the decodes leave of the step, and never less than a quarter of
  // it, so that no prompt starves behind a full batch of streams; with no stream
  // waiting, a prompt takes a whole prefill chunk.
  size_t prompt_budget = options_.max_prefill_chunk;
  if (!decoding.empty()) {
    prompt_budget =
        std::max(options_.max_step_tokens - std::min(options_.max_step_tokens, decoding.size()),
                 std::max<size_t>(1, options_.max_step_tokens / 4));
  }
  std::vector<Task*> fed;
  std::vector<model::Engine::StepInput> inputs;
  for (Task* task : decoding) {
    inputs.push_back(task->NextInput(1));
    fed.push_back(task);
  }
  for (Task* task : prompts) {
    if (prompt_budget == 0) break;
    inputs.push_back(task->NextInput(prompt_budget));
    fed.push_back(task);
    prompt_budget -= std::min(prompt_budget, inputs.back().tokens.size());
  }
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
