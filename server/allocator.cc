#include "server/allocator.h"

#include <dlfcn.h>

#include <cstddef>

#include "absl/strings/str_cat.h"

// jemalloc reads its options from this symbol when it starts (MALLOC_CONF in the
// environment is applied after it, so an operator's setting wins). A background thread
// returns freed pages to the system as they age (dirty_decay_ms, 10 s by default), so
// resident memory follows what is in use even while the server is idle; jemalloc
// starts that thread with every signal blocked, so SIGTERM still reaches main().
// Ignored when jemalloc is not linked.
extern "C" {
__attribute__((used, visibility("default"))) const char* malloc_conf = "background_thread:true";
}

namespace apeserve::server {
namespace {

// jemalloc's control interface, looked up at run time: the answer is then whatever
// actually serves malloc() (the linked jemalloc, one preloaded, or none).
using Mallctl = int (*)(const char* name, void* old_value, size_t* old_size, void* new_value,
                        size_t new_size);

template <typename T>
bool Read(Mallctl mallctl, const char* name, T& value) {
  size_t size = sizeof(value);
  return mallctl(name, &value, &size, nullptr, 0) == 0 && size == sizeof(value);
}

}  // namespace

std::string AllocatorDescription() {
  const auto mallctl = reinterpret_cast<Mallctl>(dlsym(RTLD_DEFAULT, "mallctl"));
  const char* version = nullptr;
  if (mallctl == nullptr || !Read(mallctl, "version", version) || version == nullptr) {
    return "the system malloc";
  }
  bool background = false;
  Read(mallctl, "background_thread", background);
  return absl::StrCat("jemalloc ", version,
                      background ? ", freed memory returned by a background thread"
                                 : ", freed memory returned as it allocates");
}

}  // namespace apeserve::server
