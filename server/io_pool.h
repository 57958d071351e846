// A few threads for the work that waits on storage (RocksDB reads, synced writes,
// rebuild write-backs), so that the scheduler's thread, which owns the engine's time,
// never does. Jobs run in the order submitted, on whichever thread is free. The threads
// run at a lower CPU priority than the engine's: serialising and checksumming a
// document's KV must not take a core from a step that streams are waiting on.
// Thread-safety: Submit() may be called from any thread; the destructor runs every job
// already submitted, then joins the threads.
#ifndef APESERVE_SERVER_IO_POOL_H_
#define APESERVE_SERVER_IO_POOL_H_

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"

#if defined(__linux__)
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace apeserve::server {

class IoPool {
 public:
  struct Options {
    // At least 1.
    size_t threads = 2;
    // Added to each thread's nice value (Linux; 0 leaves it as the process's).
    int niceness = 10;
    // Runs first on each thread (e.g. to keep its torch work on it); may be empty.
    std::function<void()> on_start;
  };

  explicit IoPool(Options options) {
    for (size_t i = 0; i < std::max<size_t>(options.threads, 1); ++i) {
      threads_.emplace_back([this, niceness = options.niceness, on_start = options.on_start] {
        LowerPriority(niceness);
        if (on_start) on_start();
        Work();
      });
    }
  }
  IoPool(const IoPool&) = delete;
  IoPool& operator=(const IoPool&) = delete;
  ~IoPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (std::thread& thread : threads_) thread.join();
  }

  void Submit(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    ready_.notify_one();
  }

 private:
  static void LowerPriority(int niceness) {
#if defined(__linux__)
    // On Linux a thread's nice value is its own: this leaves the engine's threads be.
    if (niceness > 0) {
      const auto tid = static_cast<id_t>(syscall(SYS_gettid));
      // Best effort: a thread that cannot lower itself runs at the process's priority.
      (void)setpriority(PRIO_PROCESS, tid, getpriority(PRIO_PROCESS, tid) + niceness);
    }
#else
    (void)niceness;
#endif
  }

  void Work() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping, and nothing left to run
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_IO_POOL_H_
