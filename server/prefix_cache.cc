#include "server/prefix_cache.h"

#include <utility>

#include "common/status_macros.h"

namespace apeserve::server {

PrefixCache::PrefixCache(const model::Engine& engine, const model::PromptPieces& pieces,
                         size_t capacity)
    : engine_(engine), pieces_(pieces), capacity_(capacity) {}

absl::StatusOr<std::shared_ptr<const model::EncodedPrefix>> PrefixCache::Get(
    absl::string_view system_prompt) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = by_prompt_.find(system_prompt); it != by_prompt_.end()) return it->second;
  }
  // Encoding happens outside the lock; two callers may both encode a new prompt, and
  // the results are identical.
  APE_ASSIGN_OR_RETURN(model::EncodedPrefix encoded,
                       engine_.EncodePrefix(pieces_.Prefix(system_prompt)));
  auto prefix = std::make_shared<const model::EncodedPrefix>(std::move(encoded));
  std::lock_guard<std::mutex> lock(mutex_);
  auto [it, inserted] = by_prompt_.emplace(std::string(system_prompt), prefix);
  if (!inserted) return it->second;
  by_hash_[prefix->hash] = prefix;
  if (!system_prompt.empty()) order_.emplace_back(system_prompt);
  while (order_.size() + 1 > capacity_ && !order_.empty()) {
    auto oldest = by_prompt_.find(order_.front());
    if (oldest != by_prompt_.end()) by_prompt_.erase(oldest);
    order_.pop_front();
  }
  std::erase_if(by_hash_, [](const auto& entry) { return entry.second.expired(); });
  return prefix;
}

std::shared_ptr<const model::EncodedPrefix> PrefixCache::FindByHash(absl::string_view hash) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = by_hash_.find(hash);
  return it == by_hash_.end() ? nullptr : it->second.lock();
}

}  // namespace apeserve::server
