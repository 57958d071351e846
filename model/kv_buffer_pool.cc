#include "model/kv_buffer_pool.h"

#include <algorithm>
#include <exception>
#include <utility>
#include <vector>

namespace apeserve::model {
namespace {

// `elements` rounded up to one of eight sizes per doubling (at most 12.5% more).
int64_t RoundUpToSizeClass(int64_t elements) {
  if (elements <= 8) return elements;
  int64_t power = 1;  // becomes the largest power of two <= elements, so at least 8
  while (power <= elements / 2) power *= 2;
  const int64_t step = std::max<int64_t>(power / 8, 1);
  return (elements + step - 1) / step * step;
}

}  // namespace

KvBufferPool::KvBufferPool(torch::TensorOptions tensor_options, Options options)
    : tensor_options_(tensor_options),
      options_(options),
      element_bytes_(
          static_cast<int64_t>(c10::elementSize(tensor_options.dtype().toScalarType()))) {}

torch::Tensor KvBufferPool::Take(int64_t elements) {
  if (elements * element_bytes_ < options_.min_buffer_bytes) {
    return torch::empty({elements}, tensor_options_);
  }
  std::vector<torch::Tensor> released;  // freed after the lock, as it goes out of scope
  {
    absl::MutexLock lock(&mu_);
    auto fit = idle_.lower_bound(elements);
    if (fit != idle_.end() && static_cast<double>(fit->first) <=
                                  static_cast<double>(elements) * (1 + options_.max_slack)) {
      torch::Tensor buffer = std::move(fit->second.buffer);
      idle_bytes_ -= fit->first * element_bytes_;
      idle_.erase(fit);
      ++reused_;
      return buffer;
    }
    ReleaseLocked(absl::Now(), released);
  }
  return torch::empty({RoundUpToSizeClass(elements)}, tensor_options_);
}

void KvBufferPool::Give(torch::Tensor buffer) noexcept {
  if (!buffer.defined() || !buffer.is_contiguous() || buffer.storage().use_count() != 1) return;
  // The whole storage as a flat buffer, whatever view of it was given.
  const int64_t elements = static_cast<int64_t>(buffer.storage().nbytes()) / element_bytes_;
  const int64_t bytes = elements * element_bytes_;
  if (bytes == 0 || bytes < options_.min_buffer_bytes || bytes > options_.max_idle_bytes) return;
  torch::Tensor flat;
  try {
    flat = torch::empty({0}, tensor_options_).set_(buffer.storage(), 0, {elements});
  } catch (const std::exception&) {
    return;  // not kept: freed as any other tensor
  }
  buffer.reset();
  std::vector<torch::Tensor> released;
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  idle_bytes_ += elements * element_bytes_;
  idle_.emplace(elements, Idle{std::move(flat), now});
  ReleaseLocked(now, released);
}

void KvBufferPool::Trim() {
  std::vector<torch::Tensor> released;
  absl::MutexLock lock(&mu_);
  ReleaseLocked(absl::Now(), released);
}

void KvBufferPool::ReleaseLocked(absl::Time now, std::vector<torch::Tensor>& released) {
  for (auto it = idle_.begin(); it != idle_.end();) {
    if (now - it->second.since <= options_.max_idle) {
      ++it;
      continue;
    }
    idle_bytes_ -= it->first * element_bytes_;
    released.push_back(std::move(it->second.buffer));
    it = idle_.erase(it);
  }
  // Over the byte bound: the longest idle go first.
  while (idle_bytes_ > options_.max_idle_bytes) {
    auto oldest = idle_.begin();
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->second.since < oldest->second.since) oldest = it;
    }
    idle_bytes_ -= oldest->first * element_bytes_;
    released.push_back(std::move(oldest->second.buffer));
    idle_.erase(oldest);
  }
}

int64_t KvBufferPool::idle_bytes() const {
  absl::MutexLock lock(&mu_);
  return idle_bytes_;
}

int64_t KvBufferPool::idle_buffers() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(idle_.size());
}

int64_t KvBufferPool::reused() const {
  absl::MutexLock lock(&mu_);
  return reused_;
}

}  // namespace apeserve::model
