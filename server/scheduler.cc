#include "server/scheduler.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace apeserve::server {

Scheduler::Scheduler(SchedulerOptions options) : options_(options), thread_([this] { Loop(); }) {}

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
  return {.queued = queue_.size(), .running = running_, .stopping = stopping_};
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    work_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

bool Scheduler::Admit(std::deque<std::shared_ptr<Task>>& running) {
  std::vector<std::pair<std::shared_ptr<Task>, absl::Status>> dropped;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    running_ = running.size();
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

void Scheduler::Loop() {
  std::deque<std::shared_ptr<Task>> running;
  while (Admit(running)) {
    // One step of each running task, in admission order.
    for (auto it = running.begin(); it != running.end();) {
      if ((*it)->Step()) {
        it = running.erase(it);
        // Counted out at once, not at the next admission: a caller that has its
        // answer sees the load without it.
        std::lock_guard<std::mutex> lock(mutex_);
        running_ = running.size();
      } else {
        ++it;
      }
    }
  }
  const absl::Status stopping = absl::UnavailableError("the server is shutting down");
  for (const std::shared_ptr<Task>& task : running) task->Abort(stopping);
  std::deque<std::shared_ptr<Task>> queued;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queued.swap(queue_);
    running_ = 0;
  }
  for (const std::shared_ptr<Task>& task : queued) task->Abort(stopping);
}

}  // namespace apeserve::server
