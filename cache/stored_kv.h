// One KV state in RocksDB's "kv" family: an entry record (records.proto, framed with
// magic "APKE") and one blob per layer (kv_blob.h), under the keys of store_keys.h.
// Writes go into a caller's WriteBatch so that they commit with the document.
#ifndef APESERVE_CACHE_STORED_KV_H_
#define APESERVE_CACHE_STORED_KV_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "cache/kv_quantization.h"
#include "cache/store_keys.h"
#include "model/kv_segment.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
class WriteBatch;
}  // namespace rocksdb

namespace apeserve::cache {

// Adds the entry record and every layer of `kv` (which must be valid) to `batch`.
// Layers that cannot be stored as `quantization` (dtype, values that are not finite)
// are stored as computed. Returns the bytes the layers take as stored.
absl::StatusOr<size_t> AddKvEntry(rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* family,
                                  const KvKey& key, const model::KvSegment& kv,
                                  KvQuantization quantization, absl::Time created);

// An upper bound on the bytes AddKvEntry adds to a batch for `kv` stored as computed
// (quantized layers take fewer). A batch reserved this large (WriteBatch's constructor)
// is allocated once. Grown by doubling, the 20 MiB of a 448-token document's KV were
// copied into ever larger allocations, those above jemalloc's oversize threshold
// (8 MiB) faulted in anew each time: about 18,700 page faults per ingested document.
size_t KvEntryBatchBytes(const model::KvSegment& kv);

// Adds the deletion of one entry (record and layers) to `batch`.
absl::Status DeleteKvEntry(rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* family,
                           const KvKey& key);

// Adds the deletion of every entry of one content, under any model or prefix.
absl::Status DeleteKvContent(rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* family,
                             absl::string_view content_hash);

// What an entry record says.
struct KvEntryInfo {
  int32_t num_layers = 0;
  size_t stored_bytes = 0;
  absl::Time created;
};
// DATA_LOSS if the record fails its frame or does not parse.
absl::StatusOr<KvEntryInfo> DecodeKvEntryRecord(absl::string_view value);

// Reads and checks one entry. NOT_FOUND if it is not stored; DATA_LOSS, saying what
// failed, if its record or any layer is damaged or they disagree on the shape;
// another code for I/O errors.
absl::StatusOr<model::KvSegment> ReadKvEntry(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* family,
                                             const KvKey& key);

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_STORED_KV_H_
