// Runs a function on its own thread every `interval` until destroyed (e.g. the
// registry's Sweep: expired contexts and idle KV go on time, not only when a write
// happens to call it). Thread-safety: construct and destroy from one thread.
#ifndef APESERVE_SERVER_PERIODIC_TASK_H_
#define APESERVE_SERVER_PERIODIC_TASK_H_

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/time/time.h"

namespace apeserve::server {

class PeriodicTask {
 public:
  PeriodicTask(absl::Duration interval, std::function<void()> run)
      : thread_([this, interval, run = std::move(run)] {
          std::unique_lock<std::mutex> lock(mutex_);
          while (!stopped_.wait_for(lock, absl::ToChronoNanoseconds(interval),
                                    [this] { return stop_; })) {
            lock.unlock();
            run();
            lock.lock();
          }
        }) {}
  PeriodicTask(const PeriodicTask&) = delete;
  PeriodicTask& operator=(const PeriodicTask&) = delete;
  ~PeriodicTask() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    stopped_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable stopped_;
  bool stop_ = false;   // guarded by mutex_
  std::thread thread_;  // last: starts after the members it uses
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_PERIODIC_TASK_H_
