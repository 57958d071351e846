// The memory allocator the server runs on.
//
// apeserve links jemalloc (Debian's libjemalloc2) rather than running on glibc's
// malloc. Under load, tensors of a few MiB come and go with every step. glibc raises
// its mmap threshold each time such a block is freed, then carves the next ones from
// its arenas (up to 8 per core), where freed memory stays: in a 10-minute soak of 64
// clients, resident memory grew by 384 MiB, most of it memory already freed. Fixing
// the threshold (M_MMAP_THRESHOLD) kept memory flatter but served a fifth fewer
// requests, every large block then being a fresh mapping the kernel zeroes. On
// jemalloc memory levels off once the caches are full, and the same soak served 11%
// more requests than on glibc (README: Faults and soak). Builds with a sanitizer use
// the sanitizer's allocator instead.
#ifndef APESERVE_SERVER_ALLOCATOR_H_
#define APESERVE_SERVER_ALLOCATOR_H_

#include <string>

namespace apeserve::server {

// What malloc() is in this process, for the start-up log: "jemalloc <version>" (with
// how it returns memory) when jemalloc serves it, else "the system malloc".
std::string AllocatorDescription();

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_ALLOCATOR_H_
