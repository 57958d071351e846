// What the services share: the options, the engine and its prompt pieces, the context
// registry, the prefixes, the scheduler, the I/O pool and the counters. ApeServer owns them all and
// outlives every call. Thread-safety: as each member's.
#ifndef APESERVE_SERVER_BACKEND_H_
#define APESERVE_SERVER_BACKEND_H_

#include <string>

#include "cache/context_registry.h"
#include "model/engine.h"
#include "server/io_pool.h"
#include "server/prefix_cache.h"
#include "server/scheduler.h"
#include "server/server_counters.h"
#include "server/server_options.h"
#include "server/token_auth.h"

namespace apeserve::server {

struct Backend {
  const ServerOptions& options;
  const model::Engine& engine;
  const model::PromptPieces& pieces;
  cache::ContextRegistry& registry;
  PrefixCache& prefixes;
  Scheduler& scheduler;
  // Where tasks read and write the store, off the scheduler's thread.
  IoPool& io;
  ServerCounters& counters;
  // Who may call what (off without a tokens file).
  const TokenAuth& auth;
};

// The namespace a request names, "default" when empty.
inline constexpr char kDefaultNamespace[] = "default";

inline std::string NamespaceOf(const std::string& requested) {
  return requested.empty() ? kDefaultNamespace : requested;
}

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_BACKEND_H_
