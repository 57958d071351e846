// Host buffers for sequences' KV caches, kept between requests so that they stay
// faulted in. Internal to model/ (torch types).
//
// Every request builds its sequence's KV cache afresh: at 16 contexts of 448 tokens
// about 300 MiB for SmolLM2, freed when the request ends. jemalloc purges freed pages of
// that size between two requests whatever its decay settings (only disabling purging
// altogether keeps them), so the next request faulted all 80,000 pages in again, about
// 60 ms of a 300 ms time to first token. Disabling purging kept every page the process
// ever freed; this pool keeps only what sequences recently used: a buffer given back is
// handed to the next sequence that needs about as much, and freed after `max_idle`
// unused or when the idle buffers would exceed `max_idle_bytes`.
//
// Thread-safe. Buffers are flat 1-D tensors in the pool's dtype and device.
#ifndef APESERVE_MODEL_KV_BUFFER_POOL_H_
#define APESERVE_MODEL_KV_BUFFER_POOL_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace apeserve::model {

class KvBufferPool {
 public:
  struct Options {
    // Idle buffers beyond this many bytes are freed, the longest idle first. 1 GiB
    // holds the caches of a few long requests of a small model.
    int64_t max_idle_bytes = int64_t{1} << 30;
    // A buffer not taken again within this time is freed, so that an idle server
    // returns what the last burst used; under load a cache is taken again within a
    // fraction of a second.
    absl::Duration max_idle = absl::Seconds(2);
    // Smaller buffers are neither pooled nor rounded up: faulting in a short
    // sequence's cache costs little, and keeping every size the traffic makes held
    // 100 MiB more in the 10-minute soak (README: KV cache buffers).
    int64_t min_buffer_bytes = int64_t{1} << 20;
    // A request is served from an idle buffer up to this much larger than it (a
    // fraction of the request); larger ones stay for larger requests.
    double max_slack = 0.25;
  };

  KvBufferPool(torch::TensorOptions tensor_options, Options options);
  explicit KvBufferPool(torch::TensorOptions tensor_options)
      : KvBufferPool(tensor_options, Options()) {}

  KvBufferPool(const KvBufferPool&) = delete;
  KvBufferPool& operator=(const KvBufferPool&) = delete;

  // A flat buffer of at least `elements` elements, contents unspecified: an idle one
  // within max_slack of the request, else a new one rounded up to one of eight sizes
  // per doubling, so that the next request of about the same size fits it too (below
  // min_buffer_bytes: a new one of exactly that size).
  torch::Tensor Take(int64_t elements);

  // Gives a buffer back for reuse: a tensor from Take or another tensor over its
  // storage. Kept only when nothing else references its storage (a view still held
  // elsewhere would see the next owner's writes), it is contiguous and its storage is
  // min_buffer_bytes or more; dropped otherwise.
  // Never throws (KvCache gives back from its destructor).
  void Give(torch::Tensor buffer) noexcept;

  // Frees the buffers idle longer than max_idle; Take (when no idle buffer fits) and
  // Give do it as they go.
  void Trim();

  // What is idle now (bytes, buffers), and how many Take calls an idle buffer served.
  int64_t idle_bytes() const;
  int64_t idle_buffers() const;
  int64_t reused() const;

 private:
  struct Idle {
    torch::Tensor buffer;
    absl::Time since;
  };

  // Moves the buffers idle past max_idle, then the longest idle while over
  // max_idle_bytes, into `released`, for the caller to free after the lock.
  void ReleaseLocked(absl::Time now, std::vector<torch::Tensor>& released)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const torch::TensorOptions tensor_options_;
  const Options options_;
  const int64_t element_bytes_;
  mutable absl::Mutex mu_;
  std::multimap<int64_t, Idle> idle_ ABSL_GUARDED_BY(mu_);  // by element count
  int64_t idle_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t reused_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_KV_BUFFER_POOL_H_
