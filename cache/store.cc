#include "cache/store.h"

#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cache/rocksdb_status.h"
#include "common/status_macros.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "spdlog/spdlog.h"

namespace apeserve::cache {
namespace {

// Column families (DESIGN.md section 4). "default" holds the store's own metadata.
constexpr char kDocsFamily[] = "docs";
constexpr char kKvFamily[] = "kv";
constexpr char kSchemaVersionKey[] = "apeserve/schema_version";

// RocksDB's info log, sent to the server's log instead of a LOG file in the data
// directory. Not only tidier: on a full disk, Debian's RocksDB (built with assertions)
// aborts the process when it logs again to a LOG file whose last write failed, and it
// logs exactly then, while handling the out-of-space error. RocksDB's chatter (options,
// flushes, compactions) is debug; its warnings and errors stay what they are.
class SpdlogInfoLog : public rocksdb::Logger {
 public:
  SpdlogInfoLog() : rocksdb::Logger(LowestWanted()) {}

  using rocksdb::Logger::Logv;
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    const spdlog::level::level_enum ours = ToSpdlog(level);
    if (!spdlog::should_log(ours)) return;
    std::string message = Format(format, ap);
    while (!message.empty() && message.back() == '\n') message.pop_back();
    spdlog::log(ours, "rocksdb: {}", message);
  }
  void LogHeader(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::HEADER_LEVEL, format, ap);
  }

 private:
  static spdlog::level::level_enum ToSpdlog(rocksdb::InfoLogLevel level) {
    switch (level) {
      case rocksdb::InfoLogLevel::DEBUG_LEVEL:
        return spdlog::level::trace;
      case rocksdb::InfoLogLevel::INFO_LEVEL:
      case rocksdb::InfoLogLevel::HEADER_LEVEL:
        return spdlog::level::debug;
      case rocksdb::InfoLogLevel::WARN_LEVEL:
        return spdlog::level::warn;
      case rocksdb::InfoLogLevel::ERROR_LEVEL:
        return spdlog::level::err;
      case rocksdb::InfoLogLevel::FATAL_LEVEL:
      case rocksdb::InfoLogLevel::NUM_INFO_LOG_LEVELS:
        break;
    }
    return spdlog::level::critical;
  }
  // The least severe RocksDB level spdlog shows now, so that RocksDB does not format
  // messages that would be dropped.
  static rocksdb::InfoLogLevel LowestWanted() {
    if (spdlog::should_log(spdlog::level::trace)) return rocksdb::InfoLogLevel::DEBUG_LEVEL;
    if (spdlog::should_log(spdlog::level::debug)) return rocksdb::InfoLogLevel::INFO_LEVEL;
    return rocksdb::InfoLogLevel::WARN_LEVEL;
  }
  static std::string Format(const char* format, va_list ap) {
    va_list measure;
    va_copy(measure, ap);
    const int length = std::vsnprintf(nullptr, 0, format, measure);
    va_end(measure);
    if (length <= 0) return {};
    std::string message(static_cast<size_t>(length) + 1, '\0');
    std::vsnprintf(message.data(), message.size(), format, ap);
    message.resize(static_cast<size_t>(length));
    return message;
  }
};

// Whether no column family holds a key.
bool IsEmpty(rocksdb::DB& db, const std::vector<rocksdb::ColumnFamilyHandle*>& families) {
  for (rocksdb::ColumnFamilyHandle* family : families) {
    std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(rocksdb::ReadOptions(), family));
    it->SeekToFirst();
    if (it->Valid() || !it->status().ok()) return false;
  }
  return true;
}

// Reads the schema version, or records ours in a store that has just been created. An
// existing database with no version and no keys is one whose creation was cut short
// (a crash between RocksDB creating it and our first write): it is finished now.
absl::StatusOr<uint32_t> ReadOrInitSchemaVersion(
    rocksdb::DB& db, const std::vector<rocksdb::ColumnFamilyHandle*>& families, bool created,
    const std::string& path) {
  std::string value;
  const rocksdb::Status read = db.Get(rocksdb::ReadOptions(), kSchemaVersionKey, &value);
  if (read.IsNotFound()) {
    if (!created && !IsEmpty(db, families)) {
      return absl::FailedPreconditionError(
          absl::StrCat("data directory '", path,
                       "' holds a RocksDB database that apeserve did not create "
                       "(no schema version); refusing to write into it"));
    }
    rocksdb::WriteOptions sync;
    sync.sync = true;
    APE_RETURN_IF_ERROR(FromRocksDb(db.Put(sync, kSchemaVersionKey, absl::StrCat(kSchemaVersion)),
                                    absl::StrCat("record schema version in '", path, "'")));
    return kSchemaVersion;
  }
  APE_RETURN_IF_ERROR(FromRocksDb(read, absl::StrCat("read schema version in '", path, "'")));
  uint32_t version = 0;
  if (!absl::SimpleAtoi(value, &version)) {
    return absl::DataLossError(
        absl::StrCat("data directory '", path, "' has an unreadable schema version '", value, "'"));
  }
  if (version != kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat("data directory '", path,
                                                      "' has schema version ", version,
                                                      "; this build reads ", kSchemaVersion));
  }
  return version;
}

rocksdb::CompressionType ToRocksDb(KvCompression compression) {
  switch (compression) {
    case KvCompression::kLz4:
      return rocksdb::kLZ4Compression;
    case KvCompression::kZstd:
      return rocksdb::kZSTD;
    case KvCompression::kNone:
      break;
  }
  return rocksdb::kNoCompression;
}

// Options of the "docs" family: small values, read by point lookups and prefix scans.
rocksdb::ColumnFamilyOptions DocsFamilyOptions(const rocksdb::Options& db_options,
                                               const std::shared_ptr<rocksdb::Cache>& cache) {
  rocksdb::ColumnFamilyOptions options(db_options);
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  options.compression = rocksdb::kLZ4Compression;
  return options;
}

// Options of the "kv" family: large values kept in blob files, small metadata in the
// LSM tree.
rocksdb::ColumnFamilyOptions KvFamilyOptions(const rocksdb::Options& db_options,
                                             const std::shared_ptr<rocksdb::Cache>& cache,
                                             const StoreOptions& store) {
  rocksdb::ColumnFamilyOptions options = DocsFamilyOptions(db_options, cache);
  options.write_buffer_size = store.kv_write_buffer_bytes;
  options.enable_blob_files = true;
  options.min_blob_size = store.min_blob_bytes;
  options.blob_compression_type = ToRocksDb(store.kv_compression);
  // Blob files whose values were deleted (evicted, superseded) are rewritten by
  // compaction once they are old; without this they would only ever grow.
  options.enable_blob_garbage_collection = true;
  return options;
}

}  // namespace

absl::string_view KvCompressionName(KvCompression compression) {
  switch (compression) {
    case KvCompression::kNone:
      return "none";
    case KvCompression::kLz4:
      return "lz4";
    case KvCompression::kZstd:
      return "zstd";
  }
  return "unknown";
}

absl::StatusOr<KvCompression> ParseKvCompression(absl::string_view name) {
  for (const KvCompression compression :
       {KvCompression::kNone, KvCompression::kLz4, KvCompression::kZstd}) {
    if (name == KvCompressionName(compression)) return compression;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("KV compression '", name, "' is not one of none, lz4, zstd"));
}

struct Store::Handles {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> families;  // owned by db; freed before it

  ~Handles() {
    if (db == nullptr) return;
    for (rocksdb::ColumnFamilyHandle* family : families) {
      // Destroying a handle only releases memory; its status reports nothing to act on.
      db->DestroyColumnFamilyHandle(family).PermitUncheckedError();
    }
    {
      const rocksdb::Status closed = db->Close();
      if (!closed.ok()) spdlog::warn("closing the store: {}", closed.ToString());
    }
  }
};

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("StoreOptions.path is empty");
  const std::string& path = options.path;
  std::error_code error;
  const bool exists = std::filesystem::exists(std::filesystem::path(path) / "CURRENT", error);
  if (!exists && !options.create_if_missing) {
    return absl::NotFoundError(
        absl::StrCat("no data directory at '", path, "' and create_if_missing is false"));
  }

  if (!exists) {
    // RocksDB creates the folder too, but logs an error for it first. A failure here is
    // reported by the open below, naming the path: not checked twice.
    std::filesystem::create_directories(path, error);
  }

  rocksdb::Options db_options;
  db_options.create_if_missing = options.create_if_missing;
  db_options.create_missing_column_families = options.create_if_missing;
  db_options.info_log = std::make_shared<SpdlogInfoLog>();
  if (options.env != nullptr) db_options.env = options.env;
  // Flushes and compactions (a document's KV is tens of MB to write into blob files)
  // run below the priority of the threads that answer: on a machine with few cores
  // they would otherwise stretch the steps that streams wait on. Best effort: an Env
  // that cannot lower them runs them as before.
  for (const rocksdb::Env::Priority pool :
       {rocksdb::Env::Priority::HIGH, rocksdb::Env::Priority::LOW}) {
    (void)db_options.env->LowerThreadPoolCPUPriority(pool, rocksdb::CpuPriority::kLow);
  }
  const std::shared_ptr<rocksdb::Cache> block_cache =
      rocksdb::NewLRUCache(options.block_cache_bytes);
  const std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions(db_options)},
      {kDocsFamily, DocsFamilyOptions(db_options, block_cache)},
      {kKvFamily, KvFamilyOptions(db_options, block_cache, options)},
  };

  auto handles = std::make_unique<Handles>();
  rocksdb::DB* raw_db = nullptr;
  const rocksdb::Status opened =
      rocksdb::DB::Open(db_options, path, descriptors, &handles->families, &raw_db);
  handles->db.reset(raw_db);
  APE_RETURN_IF_ERROR(FromRocksDb(opened, absl::StrCat("open data directory '", path, "'")));

  APE_ASSIGN_OR_RETURN(const uint32_t version,
                       ReadOrInitSchemaVersion(*handles->db, handles->families,
                                               /*created=*/!exists, path));
  spdlog::info("store open at '{}' (schema version {}{})", path, version,
               exists ? "" : ", created");
  return std::unique_ptr<Store>(new Store(path, version, std::move(handles)));
}

Store::Store(std::string path, uint32_t schema_version, std::unique_ptr<Handles> handles)
    : path_(std::move(path)), schema_version_(schema_version), handles_(std::move(handles)) {}

Store::~Store() = default;

rocksdb::DB& Store::db() const { return *handles_->db; }
rocksdb::ColumnFamilyHandle* Store::docs() const { return handles_->families[1]; }
rocksdb::ColumnFamilyHandle* Store::kv() const { return handles_->families[2]; }

}  // namespace apeserve::cache
