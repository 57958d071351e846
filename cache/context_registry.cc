#include "cache/context_registry.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cache/rocksdb_status.h"
#include "cache/store_keys.h"
#include "cache/stored_kv.h"
#include "common/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"
#include "spdlog/spdlog.h"

namespace apeserve::cache {
namespace {

using ContextPtr = std::shared_ptr<const model::EncodedContext>;

size_t ContextBytes(const model::EncodedContext& context) {
  return context.kv.TotalBytes() + context.tokens.size() * sizeof(int32_t);
}

std::string ContextName(absl::string_view namespace_id, absl::string_view id) {
  return absl::StrCat(namespace_id, "/", absl::CHexEscape(id));
}

// Every tier name of one content starts with this (KvKey::Name()).
std::string ContentNamePrefix(absl::string_view content_hash) {
  return absl::StrCat(content_hash, "/");
}

}  // namespace

class ContextRegistry::Impl {
 public:
  Impl(const ContextRegistryOptions& options, std::unique_ptr<Store> store, KvEncoder encoder,
       DeviceUploader uploader)
      : options_(options),
        store_(std::move(store)),
        encoder_(std::move(encoder)),
        uploader_(std::move(uploader)),
        device_({.capacity_bytes = uploader_ ? options.device_cache_bytes : 0,
                 .ttl = options.kv_ttl,
                 .clock = options.clock,
                 .pinned = PinnedPredicate()}),
        host_({.capacity_bytes = options.host_cache_bytes,
               .ttl = options.kv_ttl,
               .clock = options.clock,
               .pinned = PinnedPredicate()}),
        stored_({.capacity_bytes = options.stored_kv_bytes > 0 ? options.stored_kv_bytes
                                                               : std::numeric_limits<size_t>::max(),
                 .ttl = options.kv_ttl,
                 .clock = options.clock,
                 .pinned = PinnedPredicate(),
                 .never_evict_pinned = true}) {}

  absl::Status CheckTokenizer();
  absl::Status IndexStoredKv();
  absl::StatusOr<StoredContext> Put(const ContextInput& input, absl::string_view prefix_hash,
                                    const model::KvSegment* kv);
  absl::StatusOr<StoredContext> Get(absl::string_view namespace_id, absl::string_view id) const;
  absl::StatusOr<ContextPage> List(absl::string_view namespace_id,
                                   const ListOptions& options) const;
  absl::StatusOr<StoredContext> Update(absl::string_view namespace_id, absl::string_view id,
                                       const ContextUpdate& update);
  absl::StatusOr<bool> Delete(absl::string_view namespace_id, absl::string_view id);
  absl::StatusOr<LoadedContext> Load(absl::string_view namespace_id, absl::string_view id,
                                     absl::string_view prefix_hash);
  bool KvStored(const StoredContext& document, absl::string_view prefix_hash) const {
    return stored_.Contains(
        KvKey{document.content_hash, options_.model_fingerprint, std::string(prefix_hash)}.Name());
  }
  bool HasKv(const ContextInput& document, absl::string_view prefix_hash) const {
    const std::string salt = options_.isolate_namespaces ? document.namespace_id : "";
    const std::string name = KvKey{ContentHash(document.tokens, salt), options_.model_fingerprint,
                                   std::string(prefix_hash)}
                                 .Name();
    return stored_.Contains(name) || host_.Contains(name);
  }
  void Sweep();
  absl::Status Flush() {
    return FromRocksDb(db().Flush(rocksdb::FlushOptions(), {store_->docs(), store_->kv()}),
                       "flush the store");
  }
  RegistryStats stats() const;

 private:
  rocksdb::DB& db() const { return store_->db(); }
  rocksdb::WriteOptions WriteOptions() const {
    rocksdb::WriteOptions write;
    write.sync = options_.sync_writes;
    return write;
  }

  // The stored record, expired or not (writers see what is there).
  absl::StatusOr<StoredContext> ReadRecord(absl::string_view namespace_id,
                                           absl::string_view id) const;
  // Deletes a document under the write lock; true if it existed.
  absl::StatusOr<bool> DeleteLocked(absl::string_view namespace_id, absl::string_view id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mutex_);
  // Deletes the documents whose expiry has passed.
  void DeleteExpired() ABSL_LOCKS_EXCLUDED(write_mutex_);
  // Counts pinned references per content; the tiers ask through PinnedPredicate.
  LruTierOptions::PinnedFn PinnedPredicate() {
    return [this](absl::string_view name) {
      const absl::string_view content = name.substr(0, name.find('/'));
      std::lock_guard<std::mutex> lock(pins_mutex_);
      return pinned_contents_.contains(content);
    };
  }
  void Pin(const std::string& content_hash, int delta) ABSL_LOCKS_EXCLUDED(pins_mutex_) {
    if (delta == 0) return;
    std::lock_guard<std::mutex> lock(pins_mutex_);
    if ((pinned_contents_[content_hash] += delta) <= 0) pinned_contents_.erase(content_hash);
  }
  // Applies the budget again after an unpin, dropping what no longer fits.
  void Rebalance() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mutex_) {
    host_.Evict();
    device_.Evict();
    DropStored(stored_.Evict());
  }

  // Whether a document other than the one whose reference key is `except` refers to
  // `content_hash`.
  absl::StatusOr<bool> Referenced(absl::string_view content_hash, absl::string_view except) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mutex_);
  // Adds to `batch` the removal of `document`'s reference to its content and, when no
  // other document references that content, of the content's KV. Returns the content
  // whose KV goes.
  absl::StatusOr<std::optional<std::string>> Unreference(rocksdb::WriteBatch& batch,
                                                         const StoredContext& document) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mutex_);
  // Deletes stored KV entries by tier name (evicted or expired).
  void DropStored(const std::vector<std::string>& names)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mutex_);
  // Drops every tier's copies of a content no document references any more.
  void ForgetContent(absl::string_view content_hash);
  // Stores rebuilt KV if a document still refers to it.
  void WriteBack(const KvKey& key, const model::KvSegment& kv) ABSL_LOCKS_EXCLUDED(write_mutex_);
  // The stored KV of `key`, or nullopt when it has to be rebuilt.
  absl::StatusOr<std::optional<model::KvSegment>> ReadStored(const KvKey& key);
  // Hands out `context` from the fastest tier it may go to.
  LoadedContext Serve(const std::string& name, ContextPtr context, KvSource source);

  const ContextRegistryOptions options_;
  const std::unique_ptr<Store> store_;
  const KvEncoder encoder_;
  const DeviceUploader uploader_;
  LruTier<ContextPtr> device_;
  LruTier<ContextPtr> host_;
  LruTier<KvKey> stored_;  // the KV in RocksDB, bytes as stored

  // Serializes every write so that reference checks and the writes they decide on
  // cannot interleave.
  mutable std::mutex write_mutex_;

  std::atomic<uint64_t> rebuilds_{0};
  std::atomic<uint64_t> corrupt_kv_{0};
  std::atomic<uint64_t> contexts_stored_{0};
  std::atomic<uint64_t> contexts_deleted_{0};
  std::atomic<uint64_t> contexts_expired_{0};
  // Contents referenced by at least one pinned document, with how many. Locked after
  // a tier's lock (the tiers call PinnedPredicate), never before.
  mutable std::mutex pins_mutex_;
  absl::flat_hash_map<std::string, int> pinned_contents_ ABSL_GUARDED_BY(pins_mutex_);
  std::atomic<uint64_t> kv_shared_{0};
  mutable std::mutex load_stats_mutex_;
  uint64_t store_bytes_loaded_ ABSL_GUARDED_BY(load_stats_mutex_) = 0;
  double store_load_seconds_ ABSL_GUARDED_BY(load_stats_mutex_) = 0;
};

absl::Status ContextRegistry::Impl::CheckTokenizer() {
  const std::string& current = options_.tokenizer_fingerprint;
  if (current.empty()) return absl::OkStatus();
  std::string recorded;
  const rocksdb::Status read =
      db().Get(rocksdb::ReadOptions(), store_->docs(), kTokenizerKey, &recorded);
  if (!read.IsNotFound()) {
    APE_RETURN_IF_ERROR(FromRocksDb(read, "read the tokenizer fingerprint"));
    if (recorded == current) return absl::OkStatus();
    std::unique_ptr<rocksdb::Iterator> it(db().NewIterator(rocksdb::ReadOptions(), store_->docs()));
    it->Seek(std::string(1, kContextTag));
    const bool has_documents = it->Valid() && it->key()[0] == kContextTag;
    APE_RETURN_IF_ERROR(FromRocksDb(it->status(), "look for stored documents"));
    if (has_documents) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data directory '", options_.store.path, "' holds documents tokenized by tokenizer ",
          recorded, ", but this model's tokenizer is ", current,
          ": their stored token ids would stand for other text. Serve this data directory "
          "with the model its documents were stored with, or use another data directory"));
    }
    spdlog::info("registry: no documents are stored; tokenizer {} replaces {}", current, recorded);
  }
  // A new store, one without documents, or one written before tokenizers were recorded
  // (whose documents came from this tokenizer: nothing else checked it then).
  rocksdb::WriteOptions sync;
  sync.sync = true;
  return FromRocksDb(db().Put(sync, store_->docs(), kTokenizerKey, current),
                     "record the tokenizer fingerprint");
}

absl::Status ContextRegistry::Impl::IndexStoredKv() {
  {
    // Pins first, so that indexing the KV below never evicts a pinned document's.
    std::unique_ptr<rocksdb::Iterator> it(db().NewIterator(rocksdb::ReadOptions(), store_->docs()));
    for (it->Seek(std::string(1, kReferenceTag)); it->Valid() && it->key()[0] == kReferenceTag;
         it->Next()) {
      if (View(it->value()) != kPinnedReference) continue;
      if (absl::StatusOr<std::string> content = ParseReferenceKey(View(it->key())); content.ok()) {
        Pin(*content, 1);
      }
    }
    APE_RETURN_IF_ERROR(FromRocksDb(it->status(), "index the pinned contexts"));
  }
  struct Entry {
    KvKey key;
    KvEntryInfo info;
  };
  std::vector<Entry> entries;
  rocksdb::WriteBatch purge;
  size_t purged = 0;
  {
    std::unique_ptr<rocksdb::Iterator> it(db().NewIterator(rocksdb::ReadOptions(), store_->kv()));
    for (it->Seek(std::string(1, kKvEntryTag)); it->Valid() && it->key()[0] == kKvEntryTag;
         it->Next()) {
      absl::StatusOr<KvKey> key = ParseKvEntryKey(View(it->key()));
      if (!key.ok()) {
        // A key we never write: leave it alone rather than guess what it is.
        spdlog::warn("store: skipping unknown KV key '{}'",
                     std::string(absl::CHexEscape(View(it->key()))));
        continue;
      }
      absl::StatusOr<KvEntryInfo> info = DecodeKvEntryRecord(View(it->value()));
      const bool foreign = key->model_fingerprint != options_.model_fingerprint;
      if (!info.ok() || (foreign && options_.purge_other_models)) {
        APE_RETURN_IF_ERROR(DeleteKvEntry(purge, store_->kv(), *key));
        ++purged;
        if (!info.ok()) corrupt_kv_.fetch_add(1);
        continue;
      }
      if (!foreign) entries.push_back({*std::move(key), *info});
    }
    APE_RETURN_IF_ERROR(FromRocksDb(it->status(), "index the stored KV"));
  }
  if (purged > 0) {
    APE_RETURN_IF_ERROR(FromRocksDb(db().Write(WriteOptions(), &purge), "purge stale KV"));
    spdlog::info("store: dropped {} KV entries of other models or damaged", purged);
  }
  // Oldest first, so that the index's least recently used end holds the oldest.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.info.created < b.info.created; });
  std::lock_guard<std::mutex> lock(write_mutex_);
  for (Entry& entry : entries) {
    const std::string name = entry.key.Name();
    DropStored(
        stored_.Insert(name, std::move(entry.key), entry.info.stored_bytes, entry.info.created));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> ContextRegistry::Impl::Referenced(absl::string_view content_hash,
                                                       absl::string_view except) const {
  const std::string prefix = ReferencePrefix(content_hash);
  std::unique_ptr<rocksdb::Iterator> it(db().NewIterator(rocksdb::ReadOptions(), store_->docs()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    if (View(it->key()) != except) return true;
  }
  APE_RETURN_IF_ERROR(FromRocksDb(it->status(), "look up references"));
  return false;
}

absl::StatusOr<std::optional<std::string>> ContextRegistry::Impl::Unreference(
    rocksdb::WriteBatch& batch, const StoredContext& document) const {
  const std::string reference =
      ReferenceKey(document.content_hash, document.namespace_id, document.id);
  APE_RETURN_IF_ERROR(
      FromRocksDb(batch.Delete(store_->docs(), reference), "batch a reference delete"));
  APE_ASSIGN_OR_RETURN(const bool shared, Referenced(document.content_hash, reference));
  if (shared) return std::nullopt;
  APE_RETURN_IF_ERROR(DeleteKvContent(batch, store_->kv(), document.content_hash));
  return document.content_hash;
}

void ContextRegistry::Impl::DropStored(const std::vector<std::string>& names) {
  if (names.empty()) return;
  rocksdb::WriteBatch batch;
  for (const std::string& name : names) {
    absl::StatusOr<KvKey> key = ParseKvEntryKey(absl::StrCat(std::string(1, kKvEntryTag), name));
    if (!key.ok() || !DeleteKvEntry(batch, store_->kv(), *key).ok()) continue;
    stored_.Erase(name);
  }
  // Eviction is not an acknowledgement: no sync. A failure leaves KV behind that the
  // next start-up indexes again; the budget then evicts it anew.
  const rocksdb::Status written = db().Write(rocksdb::WriteOptions(), &batch);
  if (!written.ok()) spdlog::warn("store: evicting KV failed: {}", written.ToString());
}

void ContextRegistry::Impl::ForgetContent(absl::string_view content_hash) {
  const std::string prefix = ContentNamePrefix(content_hash);
  stored_.EraseWithPrefix(prefix);
  host_.EraseWithPrefix(prefix);
  device_.EraseWithPrefix(prefix);
}

absl::StatusOr<StoredContext> ContextRegistry::Impl::Put(const ContextInput& input,
                                                         absl::string_view prefix_hash,
                                                         const model::KvSegment* kv) {
  APE_RETURN_IF_ERROR(ValidateContextInput(input));
  APE_RETURN_IF_ERROR(ValidateHash("prefix hash", prefix_hash));
  const std::string content_salt = options_.isolate_namespaces ? input.namespace_id : "";
  const std::string content_hash = ContentHash(input.tokens, content_salt);
  const KvKey key{content_hash, options_.model_fingerprint, std::string(prefix_hash)};
  const std::string name = key.Name();
  if (kv != nullptr) {
    APE_RETURN_IF_ERROR(kv->Validate());
    if (kv->length != static_cast<int64_t>(input.tokens.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the KV given covers ", kv->length, " tokens; the context has ", input.tokens.size()));
    }
  }

  // Find or encode the KV outside the lock: encoding is the slow part, and its result
  // depends only on the key.
  std::optional<model::KvSegment> encoded;
  ContextPtr cached;
  const auto obtain_kv = [&]() -> absl::Status {
    if (std::optional<ContextPtr> hit = host_.Lookup(name)) {
      cached = *std::move(hit);
      kv = &cached->kv;
      return absl::OkStatus();
    }
    APE_ASSIGN_OR_RETURN(encoded, encoder_(prefix_hash, input.tokens));
    APE_RETURN_IF_ERROR(encoded->Validate());
    kv = &*encoded;
    return absl::OkStatus();
  };
  if (kv == nullptr && !stored_.Contains(name)) APE_RETURN_IF_ERROR(obtain_kv());

  StoredContext document{.namespace_id = input.namespace_id,
                         .id = input.id,
                         .content_hash = content_hash,
                         .content_salt = content_salt,
                         .tokens = input.tokens,
                         .text = input.text,
                         .labels = input.labels,
                         .created = options_.clock(),
                         .pinned = input.pinned,
                         .expires = input.expires};
  const std::string document_key = ContextKey(input.namespace_id, input.id);
  const std::string reference_key = ReferenceKey(content_hash, input.namespace_id, input.id);
  std::unique_lock<std::mutex> lock(write_mutex_);
  // The KV seen stored above may have been evicted, expired or deleted since; sharing
  // it marks it used, so that it does not expire right after this acknowledgement.
  bool shared_kv = stored_.Touch(name);
  if (!shared_kv && kv == nullptr) {
    lock.unlock();
    APE_RETURN_IF_ERROR(obtain_kv());
    lock.lock();
    shared_kv = stored_.Touch(name);
  }
  // The document's own keys and record are small beside its KV: the reservation is the KV's.
  rocksdb::WriteBatch batch(shared_kv ? 0 : KvEntryBatchBytes(*kv));
  std::optional<std::string> dropped_content;
  const absl::StatusOr<StoredContext> existing = ReadRecord(input.namespace_id, input.id);
  if (existing.ok() && existing->content_hash != content_hash) {
    APE_ASSIGN_OR_RETURN(dropped_content, Unreference(batch, *existing));
  }
  if (existing.ok() && existing->expires != absl::InfiniteFuture()) {
    APE_RETURN_IF_ERROR(FromRocksDb(
        batch.Delete(store_->docs(), ExpiryKey(existing->expires, input.namespace_id, input.id)),
        "batch an expiry delete"));
  }
  if (existing.status().code() == absl::StatusCode::kDataLoss) {
    // Its content is unknown, so its reference stays and keeps that KV alive: space
    // lost, nothing served wrongly.
    spdlog::warn("store: replacing an unreadable context record: {}",
                 std::string(existing.status().message()));
  } else if (!existing.ok() && existing.status().code() != absl::StatusCode::kNotFound) {
    return existing.status();
  }
  APE_RETURN_IF_ERROR(FromRocksDb(
      batch.Put(store_->docs(), document_key, EncodeContextRecord(document)), "batch a context"));
  APE_RETURN_IF_ERROR(
      FromRocksDb(batch.Put(store_->docs(), reference_key, input.pinned ? kPinnedReference : ""),
                  "batch a reference"));
  if (input.expires != absl::InfiniteFuture()) {
    APE_RETURN_IF_ERROR(FromRocksDb(
        batch.Put(store_->docs(), ExpiryKey(input.expires, input.namespace_id, input.id), ""),
        "batch an expiry"));
  }
  std::optional<size_t> stored_bytes;
  if (shared_kv) {
    kv_shared_.fetch_add(1);
  } else {
    APE_ASSIGN_OR_RETURN(stored_bytes, AddKvEntry(batch, store_->kv(), key, *kv,
                                                  options_.kv_quantization, document.created));
  }
  APE_RETURN_IF_ERROR(
      FromRocksDb(db().Write(WriteOptions(), &batch),
                  absl::StrCat("store context ", ContextName(input.namespace_id, input.id))));
  contexts_stored_.fetch_add(1);
  // Pins change before the KV enters the index, so a pinned document's is never
  // evicted on the way in.
  Pin(content_hash, input.pinned ? 1 : 0);
  if (existing.ok() && existing->pinned) Pin(existing->content_hash, -1);
  if (dropped_content.has_value()) ForgetContent(*dropped_content);
  if (stored_bytes.has_value()) DropStored(stored_.Insert(name, key, *stored_bytes));
  if (existing.ok() && existing->pinned) Rebalance();  // its content may have lost its pin
  // Write-through: KV this call had in hand (given, or just encoded) enters the host
  // tier, so that the first question about the document does not read it back from
  // the store. Under the lock, so that a delete right after it forgets this entry too.
  if (options_.write_through && kv != nullptr && cached == nullptr && host_.enabled() &&
      !host_.Contains(name)) {
    auto context = std::make_shared<const model::EncodedContext>(
        model::EncodedContext{.tokens = input.tokens,
                              .prefix_hash = std::string(prefix_hash),
                              .kv = encoded.has_value() ? *std::move(encoded) : *kv});
    host_.Insert(name, context, ContextBytes(*context));
  }
  return document;
}

absl::StatusOr<StoredContext> ContextRegistry::Impl::Get(absl::string_view namespace_id,
                                                         absl::string_view id) const {
  APE_ASSIGN_OR_RETURN(StoredContext document, ReadRecord(namespace_id, id));
  if (document.expires <= options_.clock()) {
    // Gone for every reader from its expiry on; the next Sweep deletes it.
    return absl::NotFoundError(absl::StrCat("context ", ContextName(namespace_id, id),
                                            " expired at ", absl::FormatTime(document.expires)));
  }
  return document;
}

absl::StatusOr<StoredContext> ContextRegistry::Impl::ReadRecord(absl::string_view namespace_id,
                                                                absl::string_view id) const {
  APE_RETURN_IF_ERROR(ValidateNamespace(namespace_id));
  APE_RETURN_IF_ERROR(ValidateContextId(id));
  std::string value;
  const rocksdb::Status read =
      db().Get(rocksdb::ReadOptions(), store_->docs(), ContextKey(namespace_id, id), &value);
  if (read.IsNotFound()) {
    return absl::NotFoundError(
        absl::StrCat("context ", ContextName(namespace_id, id), " does not exist"));
  }
  APE_RETURN_IF_ERROR(
      FromRocksDb(read, absl::StrCat("read context ", ContextName(namespace_id, id))));
  return DecodeContextRecord(value, namespace_id, id);
}

absl::StatusOr<ContextPage> ContextRegistry::Impl::List(absl::string_view namespace_id,
                                                        const ListOptions& options) const {
  APE_RETURN_IF_ERROR(ValidateNamespace(namespace_id));
  if (options.limit == 0 || options.max_examined == 0) {
    return absl::InvalidArgumentError("a page needs a limit of at least 1");
  }
  const std::string prefix = ContextKey(namespace_id, "");
  ContextPage page;
  std::unique_ptr<rocksdb::Iterator> it(db().NewIterator(rocksdb::ReadOptions(), store_->docs()));
  it->Seek(ContextKey(namespace_id, options.start_after));
  // Seek lands on start_after itself when it exists; the page begins after it.
  if (!options.start_after.empty() && it->Valid() &&
      View(it->key()) == ContextKey(namespace_id, options.start_after)) {
    it->Next();
  }
  size_t examined = 0;
  for (; it->Valid() && it->key().starts_with(prefix); it->Next()) {
    const absl::string_view id = View(it->key()).substr(prefix.size());
    if (page.contexts.size() == options.limit || examined == options.max_examined) {
      // More follow; the next page starts after the last one looked at.
      break;
    }
    ++examined;
    absl::StatusOr<StoredContext> record = DecodeContextRecord(View(it->value()), namespace_id, id);
    if (!record.ok()) {
      // One damaged record must not hide the rest of the namespace; Get reports it.
      spdlog::warn("store: listing skips {}", std::string(record.status().message()));
      page.next_start_after = std::string(id);
      continue;
    }
    StoredContext document = *std::move(record);
    const bool matches =
        std::all_of(options.labels.begin(), options.labels.end(), [&](const auto& label) {
          const auto found = document.labels.find(label.first);
          return found != document.labels.end() && found->second == label.second;
        });
    page.next_start_after = document.id;
    if (!matches || document.expires <= options_.clock()) continue;
    document.text.clear();
    page.contexts.push_back(std::move(document));
  }
  APE_RETURN_IF_ERROR(FromRocksDb(it->status(), "list contexts"));
  // Nothing left after the last record looked at: no next page.
  if (!it->Valid() || !it->key().starts_with(prefix)) page.next_start_after.clear();
  return page;
}

absl::StatusOr<StoredContext> ContextRegistry::Impl::Update(absl::string_view namespace_id,
                                                            absl::string_view id,
                                                            const ContextUpdate& update) {
  std::lock_guard<std::mutex> lock(write_mutex_);
  APE_ASSIGN_OR_RETURN(StoredContext document, Get(namespace_id, id));
  const StoredContext before = document;
  if (update.labels.has_value()) document.labels = *update.labels;
  if (update.pinned.has_value()) document.pinned = *update.pinned;
  if (update.expires.has_value()) document.expires = *update.expires;
  APE_RETURN_IF_ERROR(ValidateContextInput({.namespace_id = document.namespace_id,
                                            .id = document.id,
                                            .tokens = document.tokens,
                                            .text = document.text,
                                            .labels = document.labels}));
  rocksdb::WriteBatch batch;
  APE_RETURN_IF_ERROR(FromRocksDb(
      batch.Put(store_->docs(), ContextKey(namespace_id, id), EncodeContextRecord(document)),
      "batch a context"));
  if (document.pinned != before.pinned) {
    APE_RETURN_IF_ERROR(
        FromRocksDb(batch.Put(store_->docs(), ReferenceKey(document.content_hash, namespace_id, id),
                              document.pinned ? kPinnedReference : ""),
                    "batch a reference"));
  }
  if (document.expires != before.expires) {
    if (before.expires != absl::InfiniteFuture()) {
      APE_RETURN_IF_ERROR(
          FromRocksDb(batch.Delete(store_->docs(), ExpiryKey(before.expires, namespace_id, id)),
                      "batch an expiry delete"));
    }
    if (document.expires != absl::InfiniteFuture()) {
      APE_RETURN_IF_ERROR(
          FromRocksDb(batch.Put(store_->docs(), ExpiryKey(document.expires, namespace_id, id), ""),
                      "batch an expiry"));
    }
  }
  APE_RETURN_IF_ERROR(FromRocksDb(db().Write(WriteOptions(), &batch),
                                  absl::StrCat("update context ", ContextName(namespace_id, id))));
  if (document.pinned != before.pinned) {
    Pin(document.content_hash, document.pinned ? 1 : -1);
    if (!document.pinned) Rebalance();
  }
  return document;
}

absl::StatusOr<bool> ContextRegistry::Impl::Delete(absl::string_view namespace_id,
                                                   absl::string_view id) {
  std::lock_guard<std::mutex> lock(write_mutex_);
  // An expired context no reader sees any more did not exist for the caller either.
  const absl::StatusOr<StoredContext> record = ReadRecord(namespace_id, id);
  const bool visible = !record.ok() || record->expires > options_.clock();
  APE_ASSIGN_OR_RETURN(const bool deleted, DeleteLocked(namespace_id, id));
  return deleted && visible;
}

absl::StatusOr<bool> ContextRegistry::Impl::DeleteLocked(absl::string_view namespace_id,
                                                         absl::string_view id) {
  const absl::StatusOr<StoredContext> existing = ReadRecord(namespace_id, id);
  if (existing.status().code() == absl::StatusCode::kNotFound) return false;
  rocksdb::WriteBatch batch;
  std::optional<std::string> dropped_content;
  if (existing.ok()) {
    APE_ASSIGN_OR_RETURN(dropped_content, Unreference(batch, *existing));
    if (existing->expires != absl::InfiniteFuture()) {
      APE_RETURN_IF_ERROR(
          FromRocksDb(batch.Delete(store_->docs(), ExpiryKey(existing->expires, namespace_id, id)),
                      "batch an expiry delete"));
    }
  } else if (existing.status().code() == absl::StatusCode::kDataLoss) {
    spdlog::warn("store: deleting an unreadable context record: {}",
                 std::string(existing.status().message()));
  } else {
    return existing.status();
  }
  APE_RETURN_IF_ERROR(
      FromRocksDb(batch.Delete(store_->docs(), ContextKey(namespace_id, id)), "batch a delete"));
  APE_RETURN_IF_ERROR(FromRocksDb(db().Write(WriteOptions(), &batch),
                                  absl::StrCat("delete context ", ContextName(namespace_id, id))));
  contexts_deleted_.fetch_add(1);
  if (existing.ok() && existing->pinned) {
    Pin(existing->content_hash, -1);
    Rebalance();
  }
  if (dropped_content.has_value()) ForgetContent(*dropped_content);
  return true;
}

void ContextRegistry::Impl::DeleteExpired() {
  const std::string limit = ExpiryKeyLimit(options_.clock());
  std::vector<ExpiringContext> due;
  {
    std::unique_ptr<rocksdb::Iterator> it(db().NewIterator(rocksdb::ReadOptions(), store_->docs()));
    for (it->Seek(std::string(1, kExpiryTag)); it->Valid() && it->key().compare(limit) < 0;
         it->Next()) {
      if (absl::StatusOr<ExpiringContext> document = ParseExpiryKey(View(it->key()));
          document.ok()) {
        due.push_back(*std::move(document));
      }
    }
  }
  if (due.empty()) return;
  std::lock_guard<std::mutex> lock(write_mutex_);
  for (const ExpiringContext& document : due) {
    // Looked at again under the lock: an update may have moved the expiry since.
    const absl::StatusOr<StoredContext> record = ReadRecord(document.namespace_id, document.id);
    if (absl::IsNotFound(record.status()) || (record.ok() && record->expires != document.expires)) {
      // A key no record stands behind any more (e.g. an unreadable record was replaced):
      // dropped, or every sweep would find it again.
      const rocksdb::Status dropped =
          db().Delete(rocksdb::WriteOptions(), store_->docs(),
                      ExpiryKey(document.expires, document.namespace_id, document.id));
      if (!dropped.ok()) {
        spdlog::warn("store: dropping a stale expiry failed: {}", dropped.ToString());
      }
      continue;
    }
    const absl::StatusOr<bool> deleted = DeleteLocked(document.namespace_id, document.id);
    if (!deleted.ok()) {
      spdlog::warn("store: deleting expired context {} failed: {}",
                   ContextName(document.namespace_id, document.id), deleted.status().ToString());
      continue;
    }
    if (*deleted) contexts_expired_.fetch_add(1);
  }
}

absl::StatusOr<std::optional<model::KvSegment>> ContextRegistry::Impl::ReadStored(
    const KvKey& key) {
  const std::string name = key.Name();
  if (!stored_.Lookup(name).has_value()) return std::nullopt;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<model::KvSegment> kv = ReadKvEntry(db(), store_->kv(), key);
  if (kv.ok()) {
    const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
    std::lock_guard<std::mutex> lock(load_stats_mutex_);
    store_bytes_loaded_ += kv->TotalBytes();
    store_load_seconds_ += seconds.count();
    return std::optional<model::KvSegment>(*std::move(kv));
  }
  if (kv.status().code() == absl::StatusCode::kNotFound) {
    // Deleted or evicted since the index was consulted.
    return std::nullopt;
  }
  if (kv.status().code() != absl::StatusCode::kDataLoss) return kv.status();
  std::lock_guard<std::mutex> lock(write_mutex_);
  // Look again under the write lock: a write may have replaced the entry since.
  if (ReadKvEntry(db(), store_->kv(), key).status().code() == absl::StatusCode::kDataLoss) {
    corrupt_kv_.fetch_add(1);
    spdlog::warn("store: {}; rebuilding it", std::string(kv.status().message()));
    DropStored({name});
  }
  return std::nullopt;
}

void ContextRegistry::Impl::WriteBack(const KvKey& key, const model::KvSegment& kv) {
  std::lock_guard<std::mutex> lock(write_mutex_);
  const absl::StatusOr<bool> referenced = Referenced(key.content_hash, "");
  if (!referenced.ok() || !*referenced) return;  // deleted meanwhile: nothing to keep
  rocksdb::WriteBatch batch(KvEntryBatchBytes(kv));
  const absl::StatusOr<size_t> bytes =
      AddKvEntry(batch, store_->kv(), key, kv, options_.kv_quantization, options_.clock());
  // Rebuilt KV is derived data: without sync a crash only costs another rebuild.
  const rocksdb::Status written =
      bytes.ok() ? db().Write(rocksdb::WriteOptions(), &batch) : rocksdb::Status::Aborted();
  if (!written.ok()) {
    spdlog::warn("store: could not store rebuilt KV {}: {}", key.Name(),
                 bytes.ok() ? written.ToString() : bytes.status().ToString());
    return;
  }
  DropStored(stored_.Insert(key.Name(), key, *bytes));
}

LoadedContext ContextRegistry::Impl::Serve(const std::string& name, ContextPtr context,
                                           KvSource source) {
  if (device_.enabled()) {
    absl::StatusOr<DeviceCopy> copy = uploader_(*context);
    if (copy.ok()) {
      device_.Insert(name, copy->context, copy->bytes);
      return {std::move(copy->context), source};
    }
    spdlog::warn("device tier: upload of {} failed: {}", name,
                 std::string(copy.status().message()));
  }
  return {std::move(context), source};
}

absl::StatusOr<LoadedContext> ContextRegistry::Impl::Load(absl::string_view namespace_id,
                                                          absl::string_view id,
                                                          absl::string_view prefix_hash) {
  APE_ASSIGN_OR_RETURN(StoredContext document, Get(namespace_id, id));
  APE_RETURN_IF_ERROR(ValidateHash("prefix hash", prefix_hash));
  const KvKey key{document.content_hash, options_.model_fingerprint, std::string(prefix_hash)};
  const std::string name = key.Name();
  // A hit in a faster tier marks the slower copies used too, so that the idle
  // time-to-live drops only KV that no tier served.
  if (device_.enabled()) {
    if (std::optional<ContextPtr> hit = device_.Lookup(name)) {
      host_.Touch(name);
      stored_.Touch(name);
      return LoadedContext{*hit, KvSource::kDevice};
    }
  }
  if (std::optional<ContextPtr> hit = host_.Lookup(name)) {
    stored_.Touch(name);
    return Serve(name, *std::move(hit), KvSource::kHost);
  }

  KvSource source = KvSource::kStore;
  APE_ASSIGN_OR_RETURN(std::optional<model::KvSegment> kv, ReadStored(key));
  if (!kv.has_value() || kv->length != static_cast<int64_t>(document.tokens.size())) {
    APE_ASSIGN_OR_RETURN(kv, encoder_(prefix_hash, document.tokens));
    APE_RETURN_IF_ERROR(kv->Validate());
    if (kv->length != static_cast<int64_t>(document.tokens.size())) {
      return absl::InternalError(absl::StrCat("the encoder returned KV of ", kv->length,
                                              " tokens for a context of ", document.tokens.size()));
    }
    rebuilds_.fetch_add(1);
    WriteBack(key, *kv);
    source = KvSource::kRebuilt;
  }
  auto context = std::make_shared<const model::EncodedContext>(model::EncodedContext{
      .tokens = std::move(document.tokens), .prefix_hash = key.prefix_hash, .kv = *std::move(kv)});
  host_.Insert(name, context, ContextBytes(*context));
  return Serve(name, std::move(context), source);
}

void ContextRegistry::Impl::Sweep() {
  DeleteExpired();
  host_.EvictExpired();
  device_.EvictExpired();
  std::lock_guard<std::mutex> lock(write_mutex_);
  DropStored(stored_.EvictExpired());
}

RegistryStats ContextRegistry::Impl::stats() const {
  RegistryStats stats{.device = device_.stats(),
                      .host = host_.stats(),
                      .store = stored_.stats(),
                      .rebuilds = rebuilds_.load(),
                      .corrupt_kv = corrupt_kv_.load(),
                      .contexts_stored = contexts_stored_.load(),
                      .contexts_deleted = contexts_deleted_.load(),
                      .contexts_expired = contexts_expired_.load(),
                      .kv_shared = kv_shared_.load()};
  if (options_.stored_kv_bytes == 0) stats.store.capacity_bytes = 0;  // unlimited
  {
    std::lock_guard<std::mutex> lock(pins_mutex_);
    stats.pinned_contents = pinned_contents_.size();
  }
  std::lock_guard<std::mutex> lock(load_stats_mutex_);
  stats.store_bytes_loaded = store_bytes_loaded_;
  stats.store_load_seconds = store_load_seconds_;
  return stats;
}

absl::StatusOr<std::unique_ptr<ContextRegistry>> ContextRegistry::Open(
    ContextRegistryOptions options, KvEncoder encoder, DeviceUploader uploader) {
  APE_RETURN_IF_ERROR(ValidateHash("model fingerprint", options.model_fingerprint));
  if (!options.tokenizer_fingerprint.empty()) {
    APE_RETURN_IF_ERROR(ValidateHash("tokenizer fingerprint", options.tokenizer_fingerprint));
  }
  if (!encoder) return absl::InvalidArgumentError("the context registry needs a KV encoder");
  if (!(options.kv_ttl > absl::ZeroDuration())) {
    return absl::InvalidArgumentError("the KV time-to-live must be positive");
  }
  APE_ASSIGN_OR_RETURN(std::unique_ptr<Store> store, Store::Open(options.store));
  auto impl =
      std::make_unique<Impl>(options, std::move(store), std::move(encoder), std::move(uploader));
  APE_RETURN_IF_ERROR(impl->CheckTokenizer());
  APE_RETURN_IF_ERROR(impl->IndexStoredKv());
  const TierStats stored = impl->stats().store;
  spdlog::info("registry: {} KV entries ({} MiB) stored for model {}", stored.entries,
               stored.bytes >> 20, options.model_fingerprint);
  return std::unique_ptr<ContextRegistry>(new ContextRegistry(std::move(options), std::move(impl)));
}

ContextRegistry::ContextRegistry(ContextRegistryOptions options, std::unique_ptr<Impl> impl)
    : options_(std::move(options)), impl_(std::move(impl)) {}

ContextRegistry::~ContextRegistry() = default;

absl::StatusOr<StoredContext> ContextRegistry::Put(const ContextInput& document,
                                                   absl::string_view prefix_hash,
                                                   const model::KvSegment* kv) {
  absl::StatusOr<StoredContext> stored = impl_->Put(document, prefix_hash, kv);
  if (stored.ok()) impl_->Sweep();
  return stored;
}

absl::StatusOr<StoredContext> ContextRegistry::Get(absl::string_view namespace_id,
                                                   absl::string_view id) const {
  return impl_->Get(namespace_id, id);
}

absl::StatusOr<ContextPage> ContextRegistry::List(absl::string_view namespace_id,
                                                  const ListOptions& options) const {
  return impl_->List(namespace_id, options);
}

absl::StatusOr<StoredContext> ContextRegistry::Update(absl::string_view namespace_id,
                                                      absl::string_view id,
                                                      const ContextUpdate& update) {
  return impl_->Update(namespace_id, id, update);
}

absl::StatusOr<bool> ContextRegistry::Delete(absl::string_view namespace_id, absl::string_view id) {
  return impl_->Delete(namespace_id, id);
}

absl::StatusOr<LoadedContext> ContextRegistry::Load(absl::string_view namespace_id,
                                                    absl::string_view id,
                                                    absl::string_view prefix_hash) {
  return impl_->Load(namespace_id, id, prefix_hash);
}

bool ContextRegistry::KvStored(const StoredContext& document, absl::string_view prefix_hash) const {
  return impl_->KvStored(document, prefix_hash);
}

bool ContextRegistry::HasKv(const ContextInput& document, absl::string_view prefix_hash) const {
  return impl_->HasKv(document, prefix_hash);
}

void ContextRegistry::Sweep() { impl_->Sweep(); }

absl::Status ContextRegistry::Flush() { return impl_->Flush(); }

RegistryStats ContextRegistry::stats() const { return impl_->stats(); }

}  // namespace apeserve::cache
