// The KV memory that running requests may hold at once: a request reserves what its
// sequence will need before it starts, and gets it in the order requests were
// admitted, so that a large request is never starved by smaller ones behind it.
//
// A request's KV has two parts: its own (the query's and the answer's tokens, and any
// KV copied for it alone), and KV it reads where it lies, shared with every other
// request that names the same stored context (Engine::BeginSequence). Shared KV counts
// once, however many running requests read it, for as long as one of them does.
// Thread-safety: the scheduler's thread only.
#ifndef APESERVE_SERVER_KV_BUDGET_H_
#define APESERVE_SERVER_KV_BUDGET_H_

#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace apeserve::server {

class KvBudget {
 public:
  // KV a request reads without owning it: `key` names it (the address of the value
  // holding it, which the request keeps alive while its reservation lasts).
  struct Shared {
    const void* key = nullptr;
    size_t bytes = 0;
  };

  // Bytes granted to one request; returned when it goes.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept
        : budget_(std::exchange(other.budget_, nullptr)),
          own_(other.own_),
          shared_(std::exchange(other.shared_, {})) {}
    Reservation& operator=(Reservation&& other) noexcept {
      if (this != &other) {
        Release();
        budget_ = std::exchange(other.budget_, nullptr);
        own_ = other.own_;
        shared_ = std::exchange(other.shared_, {});
      }
      return *this;
    }
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation() { Release(); }

    // The request's own bytes (shared KV is not the request's alone).
    size_t bytes() const { return budget_ != nullptr ? own_ : 0; }

   private:
    friend class KvBudget;
    Reservation(KvBudget* budget, size_t own, std::vector<const void*> shared)
        : budget_(budget), own_(own), shared_(std::move(shared)) {}
    void Release() {
      if (budget_ == nullptr) return;
      budget_->used_ -= own_;
      for (const void* key : shared_) budget_->Unshare(key);
      budget_ = nullptr;
    }

    KvBudget* budget_ = nullptr;
    size_t own_ = 0;
    std::vector<const void*> shared_;  // distinct keys
  };

  // `capacity` bytes in all; 0: unlimited.
  explicit KvBudget(size_t capacity) : capacity_(capacity) {}
  KvBudget(const KvBudget&) = delete;
  KvBudget& operator=(const KvBudget&) = delete;

  // Starts a round in which requests ask in the order they were admitted.
  void BeginRound() { someone_waits_ = false; }

  // `own` bytes for a request and its `shared` KV (a key named twice counts once), if
  // what is not already counted fits and no request asked before it this round in vain
  // (first come, first served); else nothing: ask again next round.
  // RESOURCE_EXHAUSTED when the request alone needs more than the whole budget.
  absl::StatusOr<std::optional<Reservation>> Reserve(size_t own,
                                                     absl::Span<const Shared> shared = {}) {
    std::vector<const void*> keys;
    absl::flat_hash_set<const void*> seen;
    size_t alone = own, added = own;
    for (const Shared& kv : shared) {
      if (!seen.insert(kv.key).second) continue;
      keys.push_back(kv.key);
      alone += kv.bytes;
      if (!shared_.contains(kv.key)) added += kv.bytes;
    }
    if (capacity_ != 0 && alone > capacity_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the request's KV needs ", alone >> 20, " MiB; running requests may hold ",
                       capacity_ >> 20, " MiB in all (--max_running_kv_mib)"));
    }
    if (capacity_ != 0 && (someone_waits_ || used_ + added > capacity_)) {
      someone_waits_ = true;
      return std::nullopt;
    }
    used_ += own;
    for (const Shared& kv : shared) {
      auto [entry, inserted] = shared_.try_emplace(kv.key, Entry{.bytes = kv.bytes});
      if (!seen.erase(kv.key)) continue;  // named twice: counted at its first mention
      if (inserted) used_ += kv.bytes;
      ++entry->second.readers;
    }
    return std::optional<Reservation>(Reservation(this, own, std::move(keys)));
  }

  // Bytes held: every request's own, and each shared KV once.
  size_t used() const { return used_; }
  // Shared KV values being read now.
  size_t shared_values() const { return shared_.size(); }

 private:
  struct Entry {
    size_t bytes = 0;
    size_t readers = 0;
  };

  void Unshare(const void* key) {
    auto entry = shared_.find(key);
    if (entry == shared_.end()) return;
    if (--entry->second.readers > 0) return;
    used_ -= entry->second.bytes;
    shared_.erase(entry);
  }

  const size_t capacity_;
  size_t used_ = 0;
  bool someone_waits_ = false;
  absl::flat_hash_map<const void*, Entry> shared_;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_KV_BUDGET_H_
