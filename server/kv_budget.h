// The KV memory that running requests may hold at once: a request reserves what its
// sequence will need before it starts, and gets it in the order requests were
// admitted, so that a large request is never starved by smaller ones behind it.
// Thread-safety: the scheduler's thread only.
#ifndef APESERVE_SERVER_KV_BUDGET_H_
#define APESERVE_SERVER_KV_BUDGET_H_

#include <cstddef>
#include <optional>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace apeserve::server {

class KvBudget {
 public:
  // Bytes granted to one request; returned when it goes.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept
        : budget_(std::exchange(other.budget_, nullptr)), bytes_(other.bytes_) {}
    Reservation& operator=(Reservation&& other) noexcept {
      if (this != &other) {
        Release();
        budget_ = std::exchange(other.budget_, nullptr);
        bytes_ = other.bytes_;
      }
      return *this;
    }
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation() { Release(); }

    size_t bytes() const { return budget_ != nullptr ? bytes_ : 0; }

   private:
    friend class KvBudget;
    Reservation(KvBudget* budget, size_t bytes) : budget_(budget), bytes_(bytes) {}
    void Release() {
      if (budget_ != nullptr) budget_->used_ -= bytes_;
      budget_ = nullptr;
    }

    KvBudget* budget_ = nullptr;
    size_t bytes_ = 0;
  };

  // `capacity` bytes in all; 0: unlimited.
  explicit KvBudget(size_t capacity) : capacity_(capacity) {}
  KvBudget(const KvBudget&) = delete;
  KvBudget& operator=(const KvBudget&) = delete;

  // Starts a round in which requests ask in the order they were admitted.
  void BeginRound() { someone_waits_ = false; }

  // `bytes` for a request, if they fit and no request asked before it this round in
  // vain (first come, first served); else nothing: ask again next round.
  // RESOURCE_EXHAUSTED when `bytes` are more than the whole budget.
  absl::StatusOr<std::optional<Reservation>> Reserve(size_t bytes) {
    if (capacity_ == 0) return std::optional<Reservation>(Reservation(this, bytes));
    if (bytes > capacity_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the request's KV needs ", bytes >> 20, " MiB; running requests may hold ",
                       capacity_ >> 20, " MiB in all (--max_running_kv_mib)"));
    }
    if (someone_waits_ || used_ + bytes > capacity_) {
      someone_waits_ = true;
      return std::nullopt;
    }
    used_ += bytes;
    return std::optional<Reservation>(Reservation(this, bytes));
  }

  size_t used() const { return used_; }

 private:
  const size_t capacity_;
  size_t used_ = 0;
  bool someone_waits_ = false;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_KV_BUDGET_H_
