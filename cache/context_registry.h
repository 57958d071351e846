// The context registry: documents (the ground truth) and the KV states derived from
// them, behind one interface (DESIGN.md section 4).
//
//   Put     tokens (+ text, labels) -> one atomic RocksDB write of the document record,
//           a reference from the document to its content, and the content's KV
//           (unless an identical document already stored it: KV is content-addressed);
//           the KV also enters the host tier (write-through), as computed.
//   Load    document -> its KV after a given prefix, from the first tier that has it:
//           device LRU -> host LRU -> RocksDB -> rebuilt from the stored tokens through
//           the KvEncoder (missing, evicted, another model, another prefix, corrupt).
//           The caller sees no difference but the `source` it is told.
//   Delete  drops the document and its reference; its KV goes only when no other
//           document references the same content.
//
// Every stored value carries a checksum. A KV value that fails it is rebuilt; a
// document record that fails it gives DATA_LOSS. Documents are never evicted; KV is
// evicted from each tier by its byte budget and an optional idle time-to-live.
// Retention per document: a pinned document's KV never leaves the store (and leaves
// the memory tiers last); a document with an expiry is invisible from that time and
// deleted, KV included, by the next Sweep.
//
// Thread-safety: all methods may be called concurrently. Writes (Put, Delete, and the
// write-back of rebuilt KV) are serialized inside; loads run in parallel. One process
// at a time may open a data directory.
#ifndef APESERVE_CACHE_CONTEXT_REGISTRY_H_
#define APESERVE_CACHE_CONTEXT_REGISTRY_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cache/kv_quantization.h"
#include "cache/lru_tier.h"
#include "cache/store.h"
#include "cache/stored_context.h"
#include "model/encoded_context.h"
#include "model/kv_segment.h"

namespace apeserve::cache {

// Computes the KV of `tokens` after the prefix named `prefix_hash`, with the model the
// registry was opened for (the server wires it to Engine::EncodeContext). Called from
// any thread, never under the registry's locks.
using KvEncoder = std::function<absl::StatusOr<model::KvSegment>(absl::string_view prefix_hash,
                                                                 absl::Span<const int32_t> tokens)>;

// Makes a device-resident copy of a loaded context for the device tier, returning it
// and the device bytes it occupies. Called from any thread.
struct DeviceCopy {
  std::shared_ptr<const model::EncodedContext> context;
  size_t bytes = 0;
};
using DeviceUploader = std::function<absl::StatusOr<DeviceCopy>(const model::EncodedContext& host)>;

struct ContextRegistryOptions {
  // The RocksDB store (path required).
  StoreOptions store;
  // The model every KV is for (Engine::fingerprint()). Required. KV of other models is
  // never served; with purge_other_models it is deleted at open.
  std::string model_fingerprint;
  bool purge_other_models = true;
  // The tokenizer the documents' token ids come from (Tokenizer::fingerprint()),
  // recorded in the store. Open refuses a store whose documents came from another
  // tokenizer: their ids would mean other text under this one. Empty: not checked.
  std::string tokenizer_fingerprint;
  // Sync the write-ahead log before a Put or Delete returns. true: an acknowledged
  // ingest survives power loss; false: it survives a crash of the process only, and
  // ingest is faster. Default: true.
  bool sync_writes = true;
  // How new KV is stored. Default: as computed.
  KvQuantization kv_quantization = KvQuantization::kNone;
  // Whether documents in different namespaces may share KV. false (the default): one
  // KV per distinct content, whatever namespaces hold it. true: the content hash is
  // salted with the namespace, so equal documents in two namespaces get two KV states;
  // a tenant then cannot tell from timing whether another tenant stored a text.
  // Documents keep the key they were stored with when this changes.
  bool isolate_namespaces = false;
  // Byte budgets of the tiers. Host: decoded KV in memory (default 1 GiB). Device:
  // KV on the accelerator, used only with a DeviceUploader (default 0, off). Store:
  // KV in RocksDB (default 0, unlimited). Documents count against none of them.
  size_t host_cache_bytes = size_t{1} << 30;
  size_t device_cache_bytes = 0;
  size_t stored_kv_bytes = 0;
  // Whether KV that Put had in hand (given, or encoded by it) enters the host tier as
  // well as the store, so that the first load after an upload does not read it back
  // from disk. Default: true.
  bool write_through = true;
  // KV unused for this long is dropped from every tier (and rebuilt when next used).
  // Default: never.
  absl::Duration kv_ttl = absl::InfiniteDuration();
  // Where time comes from, for the time-to-live and created times. Default: wall clock.
  std::function<absl::Time()> clock = [] { return absl::Now(); };
};

// Where a loaded KV came from.
enum class KvSource { kDevice, kHost, kStore, kRebuilt };

struct LoadedContext {
  // Tokens, prefix hash and KV, ready for Engine::StartSequence; shared with the tier
  // that holds it, so keep it only as long as it is needed.
  std::shared_ptr<const model::EncodedContext> context;
  KvSource source = KvSource::kStore;
};

// What ContextRegistry::Update changes: the fields that are set.
struct ContextUpdate {
  std::optional<std::map<std::string, std::string>> labels = std::nullopt;
  std::optional<bool> pinned = std::nullopt;
  // absl::InfiniteFuture(): never expires.
  std::optional<absl::Time> expires = std::nullopt;
};

// One page of ContextRegistry::List.
struct ContextPage {
  // In id order (bytewise), text left out.
  std::vector<StoredContext> contexts;
  // Pass as `start_after` for the next page; empty when the namespace has no more.
  std::string next_start_after;
};

// Which documents List returns.
struct ListOptions {
  // Ids after this one (bytewise); empty starts at the first.
  std::string start_after = {};
  // Documents per page, at least 1. Default: 100.
  size_t limit = 100;
  // Only documents holding all of these labels (key and value equal).
  std::map<std::string, std::string> labels = {};
  // Records examined at most per page, so that a filter matching little cannot make one
  // call read the whole namespace: a page may then hold fewer than `limit` documents
  // (even none) and still name a next one. Default: 10,000.
  size_t max_examined = 10000;
};

struct RegistryStats {
  TierStats device;
  TierStats host;
  TierStats store;          // KV in RocksDB: hits are loads from disk, misses led to rebuilds
  uint64_t rebuilds = 0;    // KV recomputed through the encoder on a load
  uint64_t corrupt_kv = 0;  // stored KV that failed its checks (then rebuilt)
  uint64_t contexts_stored = 0;
  uint64_t contexts_deleted = 0;
  uint64_t contexts_expired = 0;  // deleted because their expiry passed
  uint64_t pinned_contents = 0;   // contents whose KV a pinned document holds
  uint64_t kv_shared = 0;         // puts that found their KV already stored
  uint64_t store_bytes_loaded = 0;
  double store_load_seconds = 0;  // time spent reading and decoding them
  double store_load_mb_per_s() const {
    return store_load_seconds > 0 ? store_bytes_loaded / 1e6 / store_load_seconds : 0;
  }
};

class ContextRegistry {
 public:
  // Opens (or creates) the store and indexes the KV it holds. INVALID_ARGUMENT for
  // bad options; FAILED_PRECONDITION when the stored documents were tokenized by
  // another tokenizer (a store without documents adopts this one); the errors of
  // Store::Open otherwise.
  static absl::StatusOr<std::unique_ptr<ContextRegistry>> Open(ContextRegistryOptions options,
                                                               KvEncoder encoder,
                                                               DeviceUploader uploader = nullptr);
  ContextRegistry(const ContextRegistry&) = delete;
  ContextRegistry& operator=(const ContextRegistry&) = delete;
  ~ContextRegistry();

  // Stores `document` (replacing one of the same namespace and id) with its KV after
  // `prefix_hash`: `kv` when given (it must cover exactly the tokens), else the KV an
  // identical document already stored, else the encoder's. One atomic write; returns
  // after it is durable as sync_writes says. INVALID_ARGUMENT for bad names, no tokens
  // or KV that does not fit; the encoder's error if it fails.
  absl::StatusOr<StoredContext> Put(const ContextInput& document, absl::string_view prefix_hash,
                                    const model::KvSegment* kv = nullptr);

  // NOT_FOUND naming the document if there is none; DATA_LOSS if its record is
  // unreadable.
  absl::StatusOr<StoredContext> Get(absl::string_view namespace_id, absl::string_view id) const;

  // The documents of a namespace, page by page, in a stable order. INVALID_ARGUMENT for
  // a bad namespace or limit; DATA_LOSS naming an unreadable record.
  absl::StatusOr<ContextPage> List(absl::string_view namespace_id,
                                   const ListOptions& options) const;

  // Changes the fields `update` sets; tokens and KV stay. Returns the document, text
  // included. NOT_FOUND / DATA_LOSS as Get; INVALID_ARGUMENT for labels past the limits.
  absl::StatusOr<StoredContext> Update(absl::string_view namespace_id, absl::string_view id,
                                       const ContextUpdate& update);

  // Deletes the document; true if it existed (deleting twice is not an error).
  absl::StatusOr<bool> Delete(absl::string_view namespace_id, absl::string_view id);

  // The document's KV after `prefix_hash`. NOT_FOUND / DATA_LOSS as Get; the encoder's
  // error when the KV has to be rebuilt and that fails.
  absl::StatusOr<LoadedContext> Load(absl::string_view namespace_id, absl::string_view id,
                                     absl::string_view prefix_hash);

  // Whether KV of `document`'s content after `prefix_hash` is in the store now (it may
  // be evicted a moment later); the cheap answer to "will a load rebuild it".
  bool KvStored(const StoredContext& document, absl::string_view prefix_hash) const;

  // Whether Put(document, prefix_hash) would find the KV of its content stored or in
  // memory now, and so need neither a given KV nor the encoder (it may be evicted a
  // moment later, and Put then encodes it).
  bool HasKv(const ContextInput& document, absl::string_view prefix_hash) const;

  // Drops KV idle for longer than the time-to-live from every tier, and deletes the
  // documents whose expiry has passed. Put calls it; a server calls it on a timer.
  void Sweep();

  // Writes what is in memory (the memtables) to the store's files, so that they
  // hold every acknowledged write and later reads come from disk (backups, benchmarks).
  absl::Status Flush();

  RegistryStats stats() const;
  const ContextRegistryOptions& options() const { return options_; }

 private:
  class Impl;
  ContextRegistry(ContextRegistryOptions options, std::unique_ptr<Impl> impl);

  ContextRegistryOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_CONTEXT_REGISTRY_H_
