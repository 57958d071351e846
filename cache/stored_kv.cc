#include "cache/stored_kv.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache/framed_record.h"
#include "cache/kv_blob.h"
#include "cache/records.pb.h"
#include "cache/rocksdb_status.h"
#include "common/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/snapshot.h"
#include "rocksdb/write_batch.h"

namespace apeserve::cache {
namespace {

constexpr char kEntryMagic[] = "APKE";

// A layer that fails to quantize is stored as computed (the blob says which).
absl::StatusOr<std::string> EncodeLayer(const model::KvSegment& kv, uint32_t layer,
                                        const KvKey& key, KvQuantization quantization) {
  if (quantization != KvQuantization::kNone && CanQuantize(kv.dtype, quantization)) {
    absl::StatusOr<std::string> blob = EncodeKvBlob(kv, layer, key, quantization);
    if (blob.ok()) return blob;
  }
  return EncodeKvBlob(kv, layer, key, KvQuantization::kNone);
}

bool SameShape(const model::KvSegment& a, const model::KvSegment& b) {
  return a.dtype == b.dtype && a.num_layers == b.num_layers && a.kv_heads == b.kv_heads &&
         a.head_dim == b.head_dim && a.start_position == b.start_position && a.length == b.length;
}

}  // namespace

absl::StatusOr<size_t> AddKvEntry(rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* family,
                                  const KvKey& key, const model::KvSegment& kv,
                                  KvQuantization quantization, absl::Time created) {
  APE_RETURN_IF_ERROR(kv.Validate());
  size_t stored_bytes = 0;
  for (uint32_t layer = 0; layer < kv.layers.size(); ++layer) {
    APE_ASSIGN_OR_RETURN(const std::string blob, EncodeLayer(kv, layer, key, quantization));
    stored_bytes += blob.size();
    APE_RETURN_IF_ERROR(
        FromRocksDb(batch.Put(family, KvLayerKey(key, layer), blob), "batch a KV layer"));
  }
  KvEntryRecord record;
  record.set_num_layers(kv.num_layers);
  record.set_stored_bytes(static_cast<int64_t>(stored_bytes));
  record.set_created_unix_micros(absl::ToUnixMicros(created));
  APE_RETURN_IF_ERROR(FromRocksDb(
      batch.Put(family, KvEntryKey(key), FrameRecord(kEntryMagic, record.SerializeAsString())),
      "batch a KV entry record"));
  return stored_bytes;
}

size_t KvEntryBatchBytes(const model::KvSegment& kv) {
  // Per layer: its key, a blob header and the batch's framing, well under this.
  constexpr size_t kLayerOverhead = 512;
  constexpr size_t kRecordAndHeader = 4096;  // the entry record and the batch's header
  return kRecordAndHeader + kv.layers.size() * (kv.LayerBytes() + kLayerOverhead);
}

absl::Status DeleteKvEntry(rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* family,
                           const KvKey& key) {
  APE_RETURN_IF_ERROR(FromRocksDb(batch.Delete(family, KvEntryKey(key)), "batch a KV delete"));
  const auto [layers_begin, layers_end] = KvLayerRange(key);
  return FromRocksDb(batch.DeleteRange(family, layers_begin, layers_end),
                     "batch a KV layer range delete");
}

absl::Status DeleteKvContent(rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* family,
                             absl::string_view content_hash) {
  const auto [entries_begin, entries_end] = KvEntryRange(content_hash);
  const auto [layers_begin, layers_end] = KvLayerRange(content_hash);
  APE_RETURN_IF_ERROR(FromRocksDb(batch.DeleteRange(family, entries_begin, entries_end),
                                  "batch a KV entry range delete"));
  return FromRocksDb(batch.DeleteRange(family, layers_begin, layers_end),
                     "batch a KV layer range delete");
}

absl::StatusOr<KvEntryInfo> DecodeKvEntryRecord(absl::string_view value) {
  APE_ASSIGN_OR_RETURN(const absl::string_view payload, UnframeRecord(kEntryMagic, value));
  KvEntryRecord record;
  constexpr int32_t kMaxLayers = 1 << 12;  // as KvSegment::ValidateShape
  if (!record.ParseFromArray(payload.data(), static_cast<int>(payload.size())) ||
      record.num_layers() <= 0 || record.num_layers() > kMaxLayers || record.stored_bytes() < 0) {
    return absl::DataLossError("KV entry record does not parse");
  }
  return KvEntryInfo{.num_layers = record.num_layers(),
                     .stored_bytes = static_cast<size_t>(record.stored_bytes()),
                     .created = absl::FromUnixMicros(record.created_unix_micros())};
}

absl::StatusOr<model::KvSegment> ReadKvEntry(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* family,
                                             const KvKey& key) {
  // One snapshot for the record and its layers: a concurrent delete or rewrite of the
  // entry is seen whole or not at all, never as a record without its layers.
  rocksdb::ManagedSnapshot snapshot(&db);
  rocksdb::ReadOptions read_options;
  read_options.snapshot = snapshot.snapshot();
  std::string record_value;
  const rocksdb::Status read = db.Get(read_options, family, KvEntryKey(key), &record_value);
  if (read.IsNotFound()) return absl::NotFoundError(absl::StrCat("no stored KV ", key.Name()));
  APE_RETURN_IF_ERROR(FromRocksDb(read, "read a KV entry record"));
  APE_ASSIGN_OR_RETURN(const KvEntryInfo info, DecodeKvEntryRecord(record_value));

  std::vector<std::string> keys;
  keys.reserve(static_cast<size_t>(info.num_layers));
  for (int32_t layer = 0; layer < info.num_layers; ++layer) {
    keys.push_back(KvLayerKey(key, static_cast<uint32_t>(layer)));
  }
  const std::vector<rocksdb::Slice> slices(keys.begin(), keys.end());
  std::vector<rocksdb::PinnableSlice> values(keys.size());
  std::vector<rocksdb::Status> statuses(keys.size());
  // Every blob carries our own checksum (verified below): RocksDB's second pass over
  // the same bytes cost 5x in load throughput (README, "Storage").
  read_options.verify_checksums = false;
  db.MultiGet(read_options, family, slices.size(), slices.data(), values.data(), statuses.data());

  model::KvSegment kv;
  kv.layers.reserve(keys.size());
  for (uint32_t layer = 0; layer < keys.size(); ++layer) {
    if (statuses[layer].IsNotFound()) {
      return absl::DataLossError(absl::StrCat("stored KV ", key.Name(), " lacks layer ", layer));
    }
    APE_RETURN_IF_ERROR(FromRocksDb(statuses[layer], "read a KV layer"));
    absl::StatusOr<DecodedKvLayer> decoded = DecodeKvBlob(View(values[layer]), key, layer);
    if (!decoded.ok()) {
      return absl::DataLossError(absl::StrCat("stored KV ", key.Name(), " layer ", layer, ": ",
                                              decoded.status().message()));
    }
    if (layer == 0) {
      kv = std::move(decoded->shape);
      kv.layers.reserve(keys.size());
    } else if (!SameShape(kv, decoded->shape)) {
      return absl::DataLossError(
          absl::StrCat("stored KV ", key.Name(), " layer ", layer, " has another shape"));
    }
    kv.layers.push_back(std::move(decoded->bytes));
  }
  if (kv.num_layers != info.num_layers) {
    return absl::DataLossError(absl::StrCat("stored KV ", key.Name(), " has ", kv.num_layers,
                                            " layers; its record says ", info.num_layers));
  }
  return kv;
}

}  // namespace apeserve::cache
