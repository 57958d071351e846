// The one translation of rocksdb::Status into absl::Status (STYLE.md rule 4), and of
// RocksDB's byte slices into abseil's string_view (Debian's abseil has its own type).
#ifndef APESERVE_CACHE_ROCKSDB_STATUS_H_
#define APESERVE_CACHE_ROCKSDB_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "rocksdb/slice.h"
#include "rocksdb/status.h"

namespace apeserve::cache {

// Maps `status` to the absl code a caller can act on, its message prefixed with
// `context` (what we were doing, e.g. "open data directory /x"). OK stays OK.
// Corruption becomes DATA_LOSS; out of space (NoSpace) RESOURCE_EXHAUSTED; other I/O
// errors, busy and lock failures UNAVAILABLE.
absl::Status FromRocksDb(const rocksdb::Status& status, absl::string_view context);

inline absl::string_view View(const rocksdb::Slice& slice) { return {slice.data(), slice.size()}; }

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_ROCKSDB_STATUS_H_
