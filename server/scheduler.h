// The scheduler: the one owner of the engine's time (continuous batching). Requests
// wait in a bounded queue, first come first served; up to `max_running` of them run at
// once. Each round, every running request does its piece of work that needs no forward
// pass (check its input, load a context, start its sequence), and then all of them
// that need the model advance together in one batched step (Engine::Step): the next
// token of every answer being decoded, and chunks of the prompts being prefilled, up
// to a token budget, so that a long prompt never freezes the streams. Each new token
// is streamed as soon as the step that made it ends; a cancelled request leaves the
// batch before the next step.
//
// Thread-safety: Submit(), load() and Stop() may be called from any thread. Tasks
// run on the scheduler's own thread.
#ifndef APESERVE_SERVER_SCHEDULER_H_
#define APESERVE_SERVER_SCHEDULER_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model/engine.h"
#include "server/kv_budget.h"

namespace apeserve::server {

class Scheduler;

// A request's work. The scheduler calls Prepare() while it returns kPreparing; once it
// returns kFeeding, each step, NextInput() and then Fed() with that input's logits.
class Task {
 public:
  enum class Phase {
    kPreparing,  // more work that needs no forward pass: Prepare() again next round
    kFeeding,    // wants tokens fed through the model: NextInput(), then Fed()
    kWaiting,    // waits for work elsewhere (storage): Prepare() again once it calls Wake()
    kFinished,   // has reported its result to whoever waits for it
  };

  virtual ~Task() = default;

  // One piece of the work that needs no forward pass. `kv` is the running requests'
  // KV budget, to reserve from before a sequence starts.
  virtual Phase Prepare(KvBudget& kv) = 0;
  // Whether the next input is one token of an answer (else a chunk of a prompt): a
  // step feeds the decodes first, so that prompts never hold up a stream.
  virtual bool decoding() const { return false; }
  // Whether the task encodes documents for storage (its chunks share a step with the
  // prompts' as SchedulerOptions::ingest_share says).
  virtual bool ingesting() const { return false; }
  // The task's part of the next step: at most `max_tokens` (at least 1) tokens.
  virtual model::Engine::StepInput NextInput(size_t max_tokens);
  // That part's logits as Engine::Step returned them, or the step's error.
  virtual Phase Fed(absl::StatusOr<std::vector<float>> logits);

  // Whether the caller has gone away or its deadline passed: the task is then
  // dropped, queued or running, before its next piece of work (Abort with the reason).
  virtual absl::Status Alive() const = 0;
  // Finishes the task with `status` (the scheduler is stopping, or Alive() failed).
  virtual void Abort(const absl::Status& status) = 0;

  // When the task entered the queue and when it started running; set by the
  // scheduler.
  absl::Time enqueued() const { return enqueued_; }
  absl::Time started() const { return started_; }

 protected:
  // Keeps `reservation` (from Prepare's budget) while the task runs; the scheduler
  // returns it when the task finishes. Call on the scheduler's thread (in Prepare or
  // Fed); an empty reservation returns the one held.
  void HoldKv(KvBudget::Reservation reservation) { kv_ = std::move(reservation); }

  // Ends a wait (Phase::kWaiting): the scheduler calls Prepare() in its next round.
  // Thread-safe; for the thread that did the work the task waited for, after it wrote
  // its results.
  void Wake();

 private:
  friend class Scheduler;
  Scheduler* scheduler_ = nullptr;  // set by Submit
  std::atomic<bool> woken_{false};
  KvBudget::Reservation kv_;
  absl::Time enqueued_ = absl::InfinitePast();
  absl::Time started_ = absl::InfinitePast();
  Phase phase_ = Phase::kPreparing;
};

struct SchedulerOptions {
  // Tasks waiting; Submit refuses more. Default: 64.
  size_t max_queued = 64;
  // Tasks running at once: the largest batch. Default: 16.
  size_t max_running = 16;
  // Tokens one step feeds in all while some task decodes: the decodes' tokens, then
  // prompt chunks in the rest. Bounds how long a prompt can delay the streams' next
  // tokens. Default: 64.
  size_t max_step_tokens = 64;
  // Tokens of a prompt chunk when no task decodes (nobody waits for a token).
  // Default: 512.
  size_t max_prefill_chunk = 512;
  // Bytes of KV the running tasks may hold in all; 0: unlimited. Default: 4 GiB.
  size_t max_running_kv_bytes = size_t{4} << 30;
  // Ingestion's (documents being encoded for storage) share of a step's prompt tokens,
  // in [0, 1]: while answers are being streamed, the most it takes (each encoded token
  // lengthens the step a stream's next token waits for); when prompts of queries want
  // tokens too, the least it gets, either taking what the other leaves. With neither
  // streams nor prompts, ingestion takes a whole prefill chunk. Default: 0.2 (four
  // streams of the embedded model on two cores: a step with ingestion takes about 1.4x
  // one without).
  double ingest_share = 0.2;
};

// How a step's tokens are shared: each decode takes one, then `prompt_tokens` go to
// prompt chunks of queries and chunks of documents being ingested, ingestion taking
// at least `ingest_least` and at most `ingest_most` of them.
struct StepShares {
  size_t prompt_tokens = 0;
  size_t ingest_least = 0;
  size_t ingest_most = 0;
};
// The shares of a step that feeds `decodes` decodes, and prompts and documents as
// `prompts_wait` and `ingests_wait` say.
StepShares ShareStep(const SchedulerOptions& options, size_t decodes, bool prompts_wait,
                     bool ingests_wait);

struct SchedulerLoad {
  size_t queued = 0;
  size_t running = 0;
  // Of those, tasks that encode documents for storage.
  size_t ingest_queued = 0;
  size_t ingesting = 0;
  // Document tokens encoded through the steps so far.
  uint64_t encoded_tokens = 0;
  size_t running_kv_bytes = 0;
  bool stopping = false;
  // Batched steps run, and the sequences they advanced in all (their ratio is the
  // mean batch).
  uint64_t steps = 0;
  uint64_t stepped_sequences = 0;
};

class Scheduler {
 public:
  // `engine` runs the batched steps; it must outlive the scheduler.
  Scheduler(const model::Engine& engine, SchedulerOptions options);
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
  friend class Task;
  // A task's wait ended (Task::Wake): the scheduler's thread goes on if it slept.
  void Notify();
  using Running = std::deque<std::shared_ptr<Task>>;

  void Loop();
  // Moves queued tasks into `running` while there is room; drops queued tasks whose
  // caller is gone. Sleeps while nothing runs, or every running task waits, until a
  // task arrives or a wait ends. Returns false when stopping.
  bool Admit(Running& running);
  // One round: drops the tasks whose caller left, prepares, then one batched step.
  void Round(Running& running);
  // One batched step of the feeding tasks.
  void Step(Running& running);
  // Counts `running` for load().
  void Publish(const Running& running);

  const model::Engine& engine_;
  const SchedulerOptions options_;
  KvBudget kv_;  // the scheduler's thread only
  mutable std::mutex mutex_;
  std::condition_variable work_;
  std::deque<std::shared_ptr<Task>> queue_ ABSL_GUARDED_BY(mutex_);
  size_t running_ ABSL_GUARDED_BY(mutex_) = 0;
  size_t ingesting_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t encoded_tokens_ ABSL_GUARDED_BY(mutex_) = 0;
  size_t running_kv_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t steps_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t stepped_sequences_ ABSL_GUARDED_BY(mutex_) = 0;
  // The scheduler's thread's own counts, published with the load.
  uint64_t steps_taken_ = 0;
  uint64_t sequences_stepped_ = 0;
  uint64_t tokens_encoded_ = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_SCHEDULER_H_
