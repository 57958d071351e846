// The durable store under apeserve: one RocksDB database holding the documents (the
// ground truth) and the KV states derived from them, in separate column families.
//
// Thread-safety: a Store may be used from many threads at once. One process at a time
// may open a data directory; RocksDB's lock file enforces it.
#ifndef APESERVE_CACHE_STORE_H_
#define APESERVE_CACHE_STORE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
}  // namespace rocksdb

namespace apeserve::cache {

// The layout version this build writes and reads; recorded in every data directory.
inline constexpr uint32_t kSchemaVersion = 1;

struct StoreOptions {
  // Folder of the database. Required.
  std::string path;
  // Create the folder and an empty store when there is none. Default: true.
  bool create_if_missing = true;
};

class Store {
 public:
  // Opens the store in `options.path`, creating it when allowed.
  // INVALID_ARGUMENT: no path. NOT_FOUND: no store there and create_if_missing is false.
  // FAILED_PRECONDITION: the folder holds a store of another schema version or a
  // database that is not apeserve's. UNAVAILABLE: another process has it open, or I/O
  // failed. DATA_LOSS: the database is corrupt.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const StoreOptions& options);

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;
  ~Store();

  const std::string& path() const { return path_; }
  // The schema version read from the data directory.
  uint32_t schema_version() const { return schema_version_; }

 private:
  struct Handles;
  Store(std::string path, uint32_t schema_version, std::unique_ptr<Handles> handles);

  std::string path_;
  uint32_t schema_version_;
  std::unique_ptr<Handles> handles_;  // the database and its column families
};

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_STORE_H_
