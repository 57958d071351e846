// The scheduler: the one owner of the engine's time. Requests wait in a bounded queue,
// first come first served; up to `max_running` of them are worked on at once, one
// step of each in turn (load a context, prefill, decode one token), so a long answer
// never holds up a short one and each new token is streamed as soon as it exists.
// Issue 12 turns "one step of each in turn" into one batched step of all of them.
//
// Thread-safety: Submit(), load() and Stop() may be called from any thread. Tasks
// run on the scheduler's own thread, one step at a time.
#ifndef APESERVE_SERVER_SCHEDULER_H_
#define APESERVE_SERVER_SCHEDULER_H_

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace apeserve::server {

// A request's work, cut into steps.
class Task {
 public:
  virtual ~Task() = default;

  // Does the next piece of work; true when the task is finished (it has reported its
  // result to whoever waits for it).
  virtual bool Step() = 0;
  // Whether the caller has gone away or its deadline passed: a queued task is then
  // dropped without running (Abort with the reason).
  virtual absl::Status Alive() const = 0;
  // Finishes the task with `status` without another step (the scheduler is stopping,
  // or Alive() failed while it was queued).
  virtual void Abort(const absl::Status& status) = 0;

  // When the task entered the queue and when it got its first step; set by the
  // scheduler before that step.
  absl::Time enqueued() const { return enqueued_; }
  absl::Time started() const { return started_; }

 private:
  friend class Scheduler;
  absl::Time enqueued_ = absl::InfinitePast();
  absl::Time started_ = absl::InfinitePast();
};

struct SchedulerOptions {
  // Tasks waiting; Submit refuses more. Default: 64.
  size_t max_queued = 64;
  // Tasks worked on at once. Default: 8.
  size_t max_running = 8;
};

struct SchedulerLoad {
  size_t queued = 0;
  size_t running = 0;
  bool stopping = false;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;
  ~Scheduler();  // Stop()

  // Queues `task`. RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE once
  // stopping; the task is then not kept.
  absl::Status Submit(std::shared_ptr<Task> task);

  SchedulerLoad load() const;
  const SchedulerOptions& options() const { return options_; }

  // Refuses new tasks, aborts the queued and running ones with UNAVAILABLE, and waits
  // for the scheduler's thread. Idempotent.
  void Stop();

 private:
  void Loop();
  // Moves queued tasks into `running` while there is room; drops queued tasks whose
  // caller is gone. Returns false when stopping.
  bool Admit(std::deque<std::shared_ptr<Task>>& running);

  const SchedulerOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable work_;
  std::deque<std::shared_ptr<Task>> queue_ ABSL_GUARDED_BY(mutex_);
  size_t running_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_SCHEDULER_H_
