// The shared prefixes contexts are encoded after: BOS, the system turn and the opening
// of the user turn (model::PromptPieces::Prefix), one per system prompt in use, each
// encoded once. The registry's KV encoder finds them again by hash.
// Thread-safety: all methods may be called concurrently.
#ifndef APESERVE_SERVER_PREFIX_CACHE_H_
#define APESERVE_SERVER_PREFIX_CACHE_H_

#include <cstddef>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/encoded_context.h"
#include "model/engine.h"

namespace apeserve::server {

class PrefixCache {
 public:
  // Borrows both; they must outlive the cache. Keeps at most `capacity` prefixes (the
  // oldest go first; the default system prompt's never goes): each holds KV for every
  // token of its system prompt, so the cap, with the server's limit on system-prompt
  // tokens, bounds that memory.
  PrefixCache(const model::Engine& engine, const model::PromptPieces& pieces, size_t capacity = 16);

  // The prefix for `system_prompt` (empty: the template's default), encoded on first
  // use. OUT_OF_RANGE when it does not fit the model's window.
  absl::StatusOr<std::shared_ptr<const model::EncodedPrefix>> Get(absl::string_view system_prompt);

  // A prefix Get() made that the cache or a caller still holds; nullptr otherwise.
  std::shared_ptr<const model::EncodedPrefix> FindByHash(absl::string_view hash) const;

 private:
  const model::Engine& engine_;
  const model::PromptPieces& pieces_;
  const size_t capacity_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const model::EncodedPrefix>, std::less<>> by_prompt_
      ABSL_GUARDED_BY(mutex_);
  // Weak: a prefix dropped from by_prompt_ stays findable while a request uses it.
  std::map<std::string, std::weak_ptr<const model::EncodedPrefix>, std::less<>> by_hash_
      ABSL_GUARDED_BY(mutex_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mutex_);  // system prompts, oldest first
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_PREFIX_CACHE_H_
