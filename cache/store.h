// The durable store under apeserve: one RocksDB database holding the documents (the
// ground truth) and the KV states derived from them, in separate column families.
//
// RocksDB's own log goes to spdlog (its warnings and errors as such, the rest at debug
// level), not to a LOG file in the data directory.
//
// Thread-safety: a Store may be used from many threads at once. One process at a time
// may open a data directory; RocksDB's lock file enforces it.
#ifndef APESERVE_CACHE_STORE_H_
#define APESERVE_CACHE_STORE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
class Env;
}  // namespace rocksdb

namespace apeserve::cache {

// The layout version this build writes and reads; recorded in every data directory.
inline constexpr uint32_t kSchemaVersion = 1;

// Compression of stored KV values. KV is noise-like floating point and compresses
// little (see the README's storage section for the measured ratios); documents and
// metadata are always LZ4-compressed.
enum class KvCompression { kNone, kLz4, kZstd };

// "none", "lz4", "zstd".
absl::string_view KvCompressionName(KvCompression compression);
// INVALID_ARGUMENT for any other name.
absl::StatusOr<KvCompression> ParseKvCompression(absl::string_view name);

// RocksDB settings; the defaults are the ones measured by tools/kv_store_bench and
// discussed in the README's storage section.
struct StoreOptions {
  // Folder of the database. Required.
  std::string path;
  // Create the folder and an empty store when there is none. Default: true.
  bool create_if_missing = true;
  // LRU block cache shared by both column families, for documents, metadata and the
  // index blocks of KV; the decoded KV itself is cached by the host tier above.
  // Default: 32 MiB.
  size_t block_cache_bytes = size_t{32} << 20;
  // Memtable size of the KV column family. KV values pass through the memtable on
  // their way to blob files, so it bounds the memory of a burst of ingests.
  // Default: 64 MiB.
  size_t kv_write_buffer_bytes = size_t{64} << 20;
  // KV values of at least this many bytes go to blob files (BlobDB), out of the LSM
  // tree, so compactions do not rewrite them. Default: 4 KiB.
  size_t min_blob_bytes = 4096;
  // Compression of KV blob files. Default: none (see KvCompression).
  KvCompression kv_compression = KvCompression::kNone;
  // The environment RocksDB reaches files through, for tests that inject failures
  // (a full disk); not owned, it must outlive the store. Default: nullptr (RocksDB's).
  rocksdb::Env* env = nullptr;
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

  // The database and its column families, for the registry's schema code
  // (store_keys.h). Owned by the store; valid while it lives.
  rocksdb::DB& db() const;
  rocksdb::ColumnFamilyHandle* docs() const;
  rocksdb::ColumnFamilyHandle* kv() const;

 private:
  struct Handles;
  Store(std::string path, uint32_t schema_version, std::unique_ptr<Handles> handles);

  std::string path_;
  uint32_t schema_version_;
  std::unique_ptr<Handles> handles_;  // the database and its column families
};

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_STORE_H_
