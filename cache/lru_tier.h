// One memory tier of the KV cache: named values, least recently used first out, under
// a byte budget, with an optional idle time-to-live. The registry keeps decoded KV in
// one on the host, device-resident KV in another, and its index of the KV stored in
// RocksDB in a third (values empty, bytes as stored).
//
// Eviction happens inside Insert; the names it pushed out are returned so the caller
// can act on them (the RocksDB index deletes those entries). Thread-safety: every
// method may be called from any thread; values are handed out by copy, so Value should
// be cheap to copy (a shared_ptr).
#ifndef APESERVE_CACHE_LRU_TIER_H_
#define APESERVE_CACHE_LRU_TIER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace apeserve::cache {

struct LruTierOptions {
  // The most bytes the tier holds; 0 keeps nothing (the tier is off).
  size_t capacity_bytes = 0;
  // An entry not used for this long is dropped on the next lookup or sweep.
  // Default: never.
  absl::Duration ttl = absl::InfiniteDuration();
  // Where time comes from (tests move it by hand). Default: the wall clock.
  std::function<absl::Time()> clock = [] { return absl::Now(); };
  // Which entries are pinned (per-document retention). Pinned entries never expire by
  // the time-to-live, and the budget evicts them only after every unpinned one; with
  // `never_evict_pinned`, not at all (the tier may then exceed its budget). Called
  // under the tier's lock: it must not call back into the tier. Default: none.
  using PinnedFn = std::function<bool(absl::string_view name)>;
  PinnedFn pinned = nullptr;
  bool never_evict_pinned = false;
};

// A snapshot of one tier's counters.
struct TierStats {
  uint64_t entries = 0;
  uint64_t bytes = 0;
  uint64_t capacity_bytes = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;    // pushed out by the byte budget
  uint64_t expirations = 0;  // dropped by the time-to-live
};

template <typename Value>
class LruTier {
 public:
  explicit LruTier(LruTierOptions options) : options_(std::move(options)) {}
  LruTier(const LruTier&) = delete;
  LruTier& operator=(const LruTier&) = delete;

  bool enabled() const { return options_.capacity_bytes > 0; }

  // The value named `name`, now the most recently used; nullopt (a miss) if there is
  // none or it has expired.
  std::optional<Value> Lookup(absl::string_view name) ABSL_LOCKS_EXCLUDED(mutex_) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto found = index_.find(name);
    if (found == index_.end()) {
      ++misses_;
      return std::nullopt;
    }
    const absl::Time now = options_.clock();
    if (now - found->second->last_used > options_.ttl && !IsPinned(found->second->name)) {
      ++expirations_;
      ++misses_;
      RemoveLocked(found->second);
      return std::nullopt;
    }
    ++hits_;
    found->second->last_used = now;
    order_.splice(order_.begin(), order_, found->second);
    return found->second->value;
  }

  // Marks `name` used now (most recently used, its idle time reset) without counting a
  // hit or miss; false if it is absent or has expired (and is then dropped).
  bool Touch(absl::string_view name) ABSL_LOCKS_EXCLUDED(mutex_) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto found = index_.find(name);
    if (found == index_.end()) return false;
    const absl::Time now = options_.clock();
    if (now - found->second->last_used > options_.ttl && !IsPinned(found->second->name)) {
      ++expirations_;
      RemoveLocked(found->second);
      return false;
    }
    found->second->last_used = now;
    order_.splice(order_.begin(), order_, found->second);
    return true;
  }

  // Whether `name` is present, without counting a hit or changing the order.
  bool Contains(absl::string_view name) const ABSL_LOCKS_EXCLUDED(mutex_) {
    std::lock_guard<std::mutex> lock(mutex_);
    return index_.contains(name);
  }

  // Adds or replaces `name`, then evicts least recently used entries until the tier
  // fits its budget (unpinned ones first). Returns the names evicted; `name` itself
  // among them only when nothing else was left to evict.
  std::vector<std::string> Insert(const std::string& name, Value value, size_t bytes)
      ABSL_LOCKS_EXCLUDED(mutex_) {
    return Insert(name, std::move(value), bytes, options_.clock());
  }

  // As above, for an entry last used at `last_used` (an index rebuilt at start-up).
  // Entries must be inserted in order of last use for the time-to-live to hold.
  std::vector<std::string> Insert(const std::string& name, Value value, size_t bytes,
                                  absl::Time last_used) ABSL_LOCKS_EXCLUDED(mutex_) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> evicted;
    if (const auto found = index_.find(name); found != index_.end()) RemoveLocked(found->second);
    if (bytes > options_.capacity_bytes && !(options_.never_evict_pinned && IsPinned(name))) {
      evicted.push_back(name);
      return evicted;
    }
    order_.push_front(Entry{name, std::move(value), bytes, last_used});
    index_[name] = order_.begin();
    bytes_ += bytes;
    EvictToBudgetLocked(evicted);
    return evicted;
  }

  // Evicts until the tier fits its budget again (after entries stopped being pinned);
  // returns the names evicted.
  std::vector<std::string> Evict() ABSL_LOCKS_EXCLUDED(mutex_) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> evicted;
    EvictToBudgetLocked(evicted);
    return evicted;
  }

  // Drops `name`; false if it was not there.
  bool Erase(absl::string_view name) ABSL_LOCKS_EXCLUDED(mutex_) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto found = index_.find(name);
    if (found == index_.end()) return false;
    RemoveLocked(found->second);
    return true;
  }

  // Drops every entry whose name starts with `prefix`; returns their names.
  std::vector<std::string> EraseWithPrefix(absl::string_view prefix) ABSL_LOCKS_EXCLUDED(mutex_) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> erased;
    for (auto it = order_.begin(); it != order_.end();) {
      const auto next = std::next(it);
      if (absl::StartsWith(it->name, prefix)) {
        erased.push_back(it->name);
        RemoveLocked(it);
      }
      it = next;
    }
    return erased;
  }

  // Drops every entry idle for longer than the time-to-live; returns their names.
  std::vector<std::string> EvictExpired() ABSL_LOCKS_EXCLUDED(mutex_) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> expired;
    const absl::Time now = options_.clock();
    // The least recently used sit at the back: stop at the first one still fresh.
    for (auto it = order_.end(); it != order_.begin();) {
      const auto candidate = std::prev(it);
      if (now - candidate->last_used <= options_.ttl) break;
      if (IsPinned(candidate->name)) {
        it = candidate;
        continue;
      }
      expired.push_back(candidate->name);
      ++expirations_;
      RemoveLocked(candidate);
    }
    return expired;
  }

  TierStats stats() const ABSL_LOCKS_EXCLUDED(mutex_) {
    std::lock_guard<std::mutex> lock(mutex_);
    return TierStats{.entries = index_.size(),
                     .bytes = bytes_,
                     .capacity_bytes = options_.capacity_bytes,
                     .hits = hits_,
                     .misses = misses_,
                     .evictions = evictions_,
                     .expirations = expirations_};
  }

 private:
  struct Entry {
    std::string name;
    Value value;
    size_t bytes;
    absl::Time last_used;
  };
  using Iterator = typename std::list<Entry>::iterator;

  bool IsPinned(absl::string_view name) const {
    return options_.pinned != nullptr && options_.pinned(name);
  }

  // Evicts until the tier fits: unpinned entries first, then (unless never) pinned ones.
  void EvictToBudgetLocked(std::vector<std::string>& evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    EvictLocked(/*include_pinned=*/false, evicted);
    if (!options_.never_evict_pinned) EvictLocked(/*include_pinned=*/true, evicted);
  }

  // Evicts least recently used entries (pinned ones too, if asked) until the tier fits.
  void EvictLocked(bool include_pinned, std::vector<std::string>& evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    for (auto it = order_.end(); bytes_ > options_.capacity_bytes && it != order_.begin();) {
      const auto candidate = std::prev(it);
      if (!include_pinned && IsPinned(candidate->name)) {
        it = candidate;
        continue;
      }
      evicted.push_back(candidate->name);
      ++evictions_;
      RemoveLocked(candidate);
    }
  }

  void RemoveLocked(Iterator entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    bytes_ -= entry->bytes;
    index_.erase(entry->name);
    order_.erase(entry);
  }

  const LruTierOptions options_;
  // std::mutex rather than absl::Mutex in cache/: ThreadSanitizer understands pthread
  // mutexes, not the lock of Debian's (uninstrumented) abseil build.
  mutable std::mutex mutex_;
  std::list<Entry> order_ ABSL_GUARDED_BY(mutex_);  // most recently used first
  absl::flat_hash_map<std::string, Iterator> index_ ABSL_GUARDED_BY(mutex_);
  size_t bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t hits_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t misses_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t evictions_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t expirations_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_LRU_TIER_H_
