#include "cache/context_registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cache/rocksdb_status.h"
#include "cache/store.h"
#include "cache/store_keys.h"
#include "rocksdb/db.h"
#include "tests/cache/registry_test_util.h"
#include "tests/util/status_matchers.h"
#include "tests/util/temp_dir.h"

namespace apeserve::cache {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::IsOkAndHolds;
using ::apeserve::testing::kModelA;
using ::apeserve::testing::kModelB;
using ::apeserve::testing::kPrefix;
using ::apeserve::testing::MakeSyntheticEncoder;
using ::apeserve::testing::RegistryOptions;
using ::apeserve::testing::StatusIs;
using ::apeserve::testing::SyntheticContext;
using ::apeserve::testing::SyntheticKv;
using ::apeserve::testing::SyntheticTokens;
using ::apeserve::testing::TempDir;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::unique_ptr<ContextRegistry> OpenOrDie(const ContextRegistryOptions& options,
                                           const KvEncoder& encoder) {
  absl::StatusOr<std::unique_ptr<ContextRegistry>> registry =
      ContextRegistry::Open(options, encoder);
  EXPECT_THAT(registry, IsOk());
  return registry.ok() ? *std::move(registry) : nullptr;
}

// The loaded context is exactly what the synthetic model computes for its tokens.
void ExpectSyntheticKv(const LoadedContext& loaded, const std::string& fingerprint,
                       absl::string_view prefix_hash = kPrefix) {
  const model::EncodedContext& context = *loaded.context;
  EXPECT_EQ(context.prefix_hash, prefix_hash);
  const model::KvSegment expected = SyntheticKv(fingerprint, prefix_hash, context.tokens, {});
  EXPECT_EQ(context.kv.layers, expected.layers);
  EXPECT_EQ(context.kv.length, expected.length);
  EXPECT_EQ(context.kv.start_position, expected.start_position);
}

TEST(ContextRegistryTest, StoresAndLoadsKvBitForBitThroughEveryTier) {
  TempDir dir;
  const ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  auto encoder = MakeSyntheticEncoder(kModelA);
  {
    auto registry = OpenOrDie(options, encoder.encoder);
    ASSERT_NE(registry, nullptr);
    absl::StatusOr<StoredContext> stored = registry->Put(SyntheticContext(1, 1), kPrefix);
    ASSERT_THAT(stored, IsOk());
    EXPECT_EQ(stored->content_hash, ContentHash(SyntheticTokens(1), ""));
    EXPECT_EQ(*encoder.calls, 1);
  }
  auto registry = OpenOrDie(options, encoder.encoder);
  ASSERT_NE(registry, nullptr);
  absl::StatusOr<StoredContext> document = registry->Get("ns", "doc-1");
  ASSERT_THAT(document, IsOk());
  EXPECT_EQ(document->tokens, SyntheticTokens(1));
  EXPECT_EQ(document->text, "text 1");
  EXPECT_EQ(document->labels.at("n"), "1");

  absl::StatusOr<LoadedContext> loaded = registry->Load("ns", "doc-1", kPrefix);
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->source, KvSource::kStore);
  ExpectSyntheticKv(*loaded, kModelA);
  absl::StatusOr<LoadedContext> again = registry->Load("ns", "doc-1", kPrefix);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->source, KvSource::kHost);
  EXPECT_EQ(again->context, loaded->context);  // shared, not copied
  EXPECT_EQ(*encoder.calls, 1);                // nothing recomputed

  const RegistryStats stats = registry->stats();
  EXPECT_EQ(stats.store.hits, 1U);
  EXPECT_EQ(stats.host.hits, 1U);
  EXPECT_EQ(stats.host.misses, 1U);
  EXPECT_EQ(stats.rebuilds, 0U);
  EXPECT_EQ(stats.store_bytes_loaded, loaded->context->kv.TotalBytes());
  EXPECT_GT(stats.store_load_mb_per_s(), 0);
}

TEST(ContextRegistryTest, FlushKeepsEverythingLoadable) {
  TempDir dir;
  const ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  auto encoder = MakeSyntheticEncoder(kModelA);
  {
    auto registry = OpenOrDie(options, encoder.encoder);
    ASSERT_THAT(registry->Put(SyntheticContext(1, 1), kPrefix), IsOk());
    EXPECT_THAT(registry->Flush(), IsOk());
  }
  auto registry = OpenOrDie(options, encoder.encoder);
  absl::StatusOr<LoadedContext> loaded = registry->Load("ns", "doc-1", kPrefix);
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->source, KvSource::kStore);
  ExpectSyntheticKv(*loaded, kModelA);
}

TEST(ContextRegistryTest, KvGivenWithTheDocumentIsStoredAsGiven) {
  TempDir dir;
  auto encoder = MakeSyntheticEncoder(kModelA);
  auto registry = OpenOrDie(RegistryOptions(dir.Join("data")), encoder.encoder);
  const model::KvSegment kv = SyntheticKv(kModelA, kPrefix, SyntheticTokens(2), {});
  ASSERT_THAT(registry->Put(SyntheticContext(2, 2), kPrefix, &kv), IsOk());
  EXPECT_EQ(*encoder.calls, 0);
  model::KvSegment short_kv = SyntheticKv(kModelA, kPrefix, SyntheticTokens(1), {});
  EXPECT_THAT(registry->Put(SyntheticContext(3, 2), kPrefix, &short_kv),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("covers")));
}

TEST(ContextRegistryTest, Int8StorageComesBackWithinItsBound) {
  TempDir dir;
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  options.kv_quantization = KvQuantization::kInt8PerChannel;
  options.host_cache_bytes = 0;  // every load reads the store
  auto registry = OpenOrDie(options, MakeSyntheticEncoder(kModelA).encoder);
  ASSERT_THAT(registry->Put(SyntheticContext(1, 12), kPrefix), IsOk());
  absl::StatusOr<LoadedContext> loaded = registry->Load("ns", "doc-1", kPrefix);
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->source, KvSource::kStore);
  const model::KvSegment exact = SyntheticKv(kModelA, kPrefix, SyntheticTokens(12), {});
  const model::KvSegment& kv = loaded->context->kv;
  ASSERT_EQ(kv.layers.size(), exact.layers.size());
  EXPECT_NE(kv.layers, exact.layers);  // it really was quantized
  // Synthetic values lie in [-8, 8): half a step is at most 8 / 127 / 2.
  for (size_t layer = 0; layer < kv.layers.size(); ++layer) {
    const auto* a = reinterpret_cast<const float*>(kv.layers[layer].data());
    const auto* b = reinterpret_cast<const float*>(exact.layers[layer].data());
    for (size_t i = 0; i < kv.layers[layer].size() / sizeof(float); ++i) {
      ASSERT_NEAR(a[i], b[i], 8.0 / 127 / 2 + 1e-6);
    }
  }
  // int8 plus scales take about a quarter of float32.
  EXPECT_LT(registry->stats().store.bytes, exact.TotalBytes() / 2);
}

TEST(ContextRegistryTest, IdenticalDocumentsShareOneKvUntilTheLastIsDeleted) {
  TempDir dir;
  auto encoder = MakeSyntheticEncoder(kModelA);
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  options.host_cache_bytes = 0;
  auto registry = OpenOrDie(options, encoder.encoder);
  ASSERT_THAT(registry->Put(SyntheticContext(1, 7), kPrefix), IsOk());
  ContextInput twin = SyntheticContext(2, 7);
  twin.namespace_id = "other-namespace";
  ASSERT_THAT(registry->Put(twin, kPrefix), IsOk());
  EXPECT_EQ(*encoder.calls, 1);
  EXPECT_EQ(registry->stats().kv_shared, 1U);
  EXPECT_EQ(registry->stats().store.entries, 1U);

  EXPECT_THAT(registry->Delete("ns", "doc-1"), testing::IsOkAndHolds(true));
  EXPECT_THAT(registry->Delete("ns", "doc-1"), testing::IsOkAndHolds(false));  // idempotent
  EXPECT_THAT(registry->Get("ns", "doc-1"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("doc-1")));
  absl::StatusOr<LoadedContext> loaded = registry->Load("other-namespace", "doc-2", kPrefix);
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->source, KvSource::kStore);  // the shared KV survived the delete
  EXPECT_EQ(*encoder.calls, 1);

  EXPECT_THAT(registry->Delete("other-namespace", "doc-2"), testing::IsOkAndHolds(true));
  EXPECT_EQ(registry->stats().store.entries, 0U);
  EXPECT_EQ(registry->stats().store.bytes, 0U);
}

// With isolated namespaces, equal documents share KV within a namespace only; what
// was stored before isolation was switched on keeps its key and stays loadable.
TEST(ContextRegistryTest, IsolatedNamespacesNeverShareKv) {
  TempDir dir;
  auto encoder = MakeSyntheticEncoder(kModelA);
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  options.host_cache_bytes = 0;
  {
    auto registry = OpenOrDie(options, encoder.encoder);  // shared: the default
    ASSERT_THAT(registry->Put(SyntheticContext(1, 7), kPrefix), IsOk());
  }
  options.isolate_namespaces = true;
  auto registry = OpenOrDie(options, encoder.encoder);
  ContextInput same_namespace = SyntheticContext(2, 7);
  ContextInput other_namespace = SyntheticContext(3, 7);
  other_namespace.namespace_id = "other-namespace";
  absl::StatusOr<StoredContext> salted = registry->Put(same_namespace, kPrefix);
  absl::StatusOr<StoredContext> other = registry->Put(other_namespace, kPrefix);
  ASSERT_THAT(salted, IsOk());
  ASSERT_THAT(other, IsOk());
  const std::string unsalted = ContentHash(SyntheticTokens(7), "");
  EXPECT_EQ(salted->content_hash, ContentHash(SyntheticTokens(7), "ns"));
  EXPECT_EQ(other->content_hash, ContentHash(SyntheticTokens(7), "other-namespace"));
  EXPECT_NE(salted->content_hash, unsalted);
  EXPECT_NE(salted->content_hash, other->content_hash);
  EXPECT_EQ(*encoder.calls, 3);  // one KV per key, none shared
  EXPECT_EQ(registry->stats().kv_shared, 0U);
  EXPECT_EQ(registry->stats().store.entries, 3U);

  ContextInput twin = SyntheticContext(4, 7);  // same namespace: shares
  ASSERT_THAT(registry->Put(twin, kPrefix), IsOk());
  EXPECT_EQ(*encoder.calls, 3);
  EXPECT_EQ(registry->stats().kv_shared, 1U);

  for (const auto& [namespace_id, id] : std::vector<std::pair<std::string, std::string>>{
           {"ns", "doc-1"}, {"ns", "doc-2"}, {"other-namespace", "doc-3"}, {"ns", "doc-4"}}) {
    absl::StatusOr<LoadedContext> loaded = registry->Load(namespace_id, id, kPrefix);
    ASSERT_THAT(loaded, IsOk()) << namespace_id << "/" << id;
    EXPECT_EQ(loaded->source, KvSource::kStore);
    ExpectSyntheticKv(*loaded, kModelA);
  }
  absl::StatusOr<StoredContext> before_isolation = registry->Get("ns", "doc-1");
  ASSERT_THAT(before_isolation, IsOk());
  EXPECT_EQ(before_isolation->content_hash, unsalted);
  EXPECT_EQ(*encoder.calls, 3);
}

TEST(ContentHashTest, TheSaltSeparatesKeysAndTheTokensStillDecide) {
  const std::vector<int32_t> tokens = SyntheticTokens(1);
  EXPECT_EQ(ContentHash(tokens, "a"), ContentHash(tokens, "a"));
  EXPECT_NE(ContentHash(tokens, "a"), ContentHash(tokens, "b"));
  EXPECT_NE(ContentHash(tokens, "a"), ContentHash(tokens, ""));
  EXPECT_NE(ContentHash(tokens, "a"), ContentHash(SyntheticTokens(2), "a"));
  EXPECT_EQ(ContentHash(tokens, "a").size(), 32U);
  // The salt's length is hashed too: "ab" + tokens is not "a" + ("b" + tokens).
  std::vector<int32_t> shifted = {0x62};  // 'b' as the first token byte
  shifted.insert(shifted.end(), tokens.begin(), tokens.end());
  EXPECT_NE(ContentHash(tokens, "ab"), ContentHash(shifted, "a"));
}

TEST(ContextRegistryTest, ReplacingADocumentDropsKvNoLongerReferenced) {
  TempDir dir;
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  auto encoder = MakeSyntheticEncoder(kModelA);
  {
    auto registry = OpenOrDie(options, encoder.encoder);
    ASSERT_THAT(registry->Put(SyntheticContext(1, 1), kPrefix), IsOk());
    ASSERT_THAT(registry->Put(SyntheticContext(1, 2), kPrefix), IsOk());
    EXPECT_EQ(registry->stats().store.entries, 1U);
    absl::StatusOr<LoadedContext> loaded = registry->Load("ns", "doc-1", kPrefix);
    ASSERT_THAT(loaded, IsOk());
    EXPECT_EQ(loaded->context->tokens, SyntheticTokens(2));
    ExpectSyntheticKv(*loaded, kModelA);
  }
  // What is on disk agrees: one entry after reopening.
  auto registry = OpenOrDie(options, encoder.encoder);
  EXPECT_EQ(registry->stats().store.entries, 1U);
}

// Ids, text and labels are kept as bytes: what is not UTF-8 reads back all the same.
TEST(ContextRegistryTest, ListsANamespacePageByPageInIdOrderWithLabelFilters) {
  TempDir dir;
  auto encoder = MakeSyntheticEncoder(kModelA);
  auto registry = OpenOrDie(RegistryOptions(dir.Join("data")), encoder.encoder);
  ASSERT_NE(registry, nullptr);
  for (int n : {3, 1, 5, 2, 4}) {
    ContextInput document = SyntheticContext(n, n);
    document.labels["parity"] = n % 2 == 0 ? "even" : "odd";
    ASSERT_THAT(registry->Put(document, kPrefix), IsOk());
  }
  ContextInput elsewhere = SyntheticContext(9, 9);
  elsewhere.namespace_id = "other";
  ASSERT_THAT(registry->Put(elsewhere, kPrefix), IsOk());

  std::vector<std::string> ids;
  ListOptions options{.limit = 2};
  for (int pages = 1;; ++pages) {
    absl::StatusOr<ContextPage> page = registry->List("ns", options);
    ASSERT_THAT(page, IsOk());
    for (const StoredContext& document : page->contexts) {
      ids.push_back(document.id);
      EXPECT_TRUE(document.text.empty()) << "pages leave the text out";
      EXPECT_EQ(document.tokens.size(), SyntheticTokens(std::stoi(document.labels.at("n"))).size());
    }
    if (page->next_start_after.empty()) {
      EXPECT_EQ(pages, 3);
      break;
    }
    ASSERT_LT(pages, 10);
    options.start_after = page->next_start_after;
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"doc-1", "doc-2", "doc-3", "doc-4", "doc-5"}));

  absl::StatusOr<ContextPage> even =
      registry->List("ns", {.limit = 10, .labels = {{"parity", "even"}}});
  ASSERT_THAT(even, IsOk());
  ASSERT_EQ(even->contexts.size(), 2);
  EXPECT_EQ(even->contexts[0].id, "doc-2");
  EXPECT_EQ(even->contexts[1].id, "doc-4");
  EXPECT_TRUE(even->next_start_after.empty());

  // A filter that matches little still returns within max_examined records per page.
  absl::StatusOr<ContextPage> bounded =
      registry->List("ns", {.limit = 10, .labels = {{"n", "5"}}, .max_examined = 2});
  ASSERT_THAT(bounded, IsOk());
  EXPECT_TRUE(bounded->contexts.empty());
  EXPECT_EQ(bounded->next_start_after, "doc-2");

  absl::StatusOr<ContextPage> empty = registry->List("nobody", {});
  ASSERT_THAT(empty, IsOk());
  EXPECT_TRUE(empty->contexts.empty());
  EXPECT_THAT(registry->List("ns", {.limit = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("limit")));
  EXPECT_THAT(registry->List("bad namespace!", {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("namespace")));
}

TEST(ContextRegistryTest, UpdatesLabelsAndKeepsTokensTextAndKv) {
  TempDir dir;
  auto encoder = MakeSyntheticEncoder(kModelA);
  auto registry = OpenOrDie(RegistryOptions(dir.Join("data")), encoder.encoder);
  ASSERT_NE(registry, nullptr);
  ASSERT_THAT(registry->Put(SyntheticContext(1, 1), kPrefix), IsOk());
  absl::StatusOr<StoredContext> updated =
      registry->Update("ns", "doc-1", {.labels = {{{"topic", "goats"}}}});
  ASSERT_THAT(updated, IsOk());
  EXPECT_EQ(updated->labels, (std::map<std::string, std::string>{{"topic", "goats"}}));
  absl::StatusOr<StoredContext> read = registry->Get("ns", "doc-1");
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->labels, updated->labels);
  EXPECT_EQ(read->text, "text 1");
  EXPECT_EQ(read->tokens, SyntheticTokens(1));
  absl::StatusOr<LoadedContext> loaded = registry->Load("ns", "doc-1", kPrefix);
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->source, KvSource::kHost);  // written through by the Put
  ExpectSyntheticKv(*loaded, kModelA);
  EXPECT_EQ(*encoder.calls, 1) << "an update never re-encodes";

  EXPECT_THAT(registry->Update("ns", "missing", {}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing")));
  EXPECT_THAT(registry->Update("ns", "doc-1", {.labels = {{{"", "empty key"}}}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("label")));
  EXPECT_EQ(registry->Get("ns", "doc-1")->labels, updated->labels)
      << "a refused update changes nothing";
}

// Document n with as many tokens as document 1 (SyntheticTokens' length repeats every 13).
ContextInput SameSize(int n) { return SyntheticContext(n, 1 + 13 * (n - 1)); }

TEST(ContextRegistryTest, APinnedDocumentsKvSurvivesEvictionPressureAcrossRestarts) {
  TempDir dir;
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  const size_t one = SyntheticKv(kModelA, kPrefix, SyntheticTokens(1), {}).TotalBytes();
  options.stored_kv_bytes = 2 * one + one / 2;  // room for two documents' KV
  auto encoder = MakeSyntheticEncoder(kModelA);
  {
    auto registry = OpenOrDie(options, encoder.encoder);
    ASSERT_NE(registry, nullptr);
    ContextInput pinned = SyntheticContext(1, 1);
    pinned.pinned = true;
    ASSERT_THAT(registry->Put(pinned, kPrefix), IsOk());
    for (int n = 2; n <= 6; ++n) ASSERT_THAT(registry->Put(SameSize(n), kPrefix), IsOk());
    EXPECT_TRUE(registry->KvStored(*registry->Get("ns", "doc-1"), kPrefix));
    EXPECT_FALSE(registry->KvStored(*registry->Get("ns", "doc-2"), kPrefix)) << "evicted";
    EXPECT_EQ(registry->stats().pinned_contents, 1);
  }
  // The pin is stored: a restart indexes it before the KV, so nothing evicts it.
  auto registry = OpenOrDie(options, encoder.encoder);
  ASSERT_NE(registry, nullptr);
  const int calls = *encoder.calls;
  absl::StatusOr<LoadedContext> loaded = registry->Load("ns", "doc-1", kPrefix);
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->source, KvSource::kStore);
  EXPECT_EQ(*encoder.calls, calls);
  for (int n = 7; n <= 9; ++n) ASSERT_THAT(registry->Put(SameSize(n), kPrefix), IsOk());
  EXPECT_TRUE(registry->KvStored(*registry->Get("ns", "doc-1"), kPrefix));

  // Unpinned, it is an ordinary entry again: the budget evicts it (least recently used).
  ASSERT_THAT(registry->Update("ns", "doc-1", {.pinned = false}), IsOk());
  EXPECT_EQ(registry->stats().pinned_contents, 0);
  for (int n = 10; n <= 11; ++n) ASSERT_THAT(registry->Put(SameSize(n), kPrefix), IsOk());
  EXPECT_FALSE(registry->KvStored(*registry->Get("ns", "doc-1"), kPrefix));
  EXPECT_FALSE(registry->Get("ns", "doc-1")->pinned);
}

TEST(ContextRegistryTest, AnExpiredDocumentIsGoneWithItsKv) {
  TempDir dir;
  absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  options.clock = [&now] { return now; };
  auto encoder = MakeSyntheticEncoder(kModelA);
  auto registry = OpenOrDie(options, encoder.encoder);
  ASSERT_NE(registry, nullptr);
  ContextInput soon = SyntheticContext(1, 1);
  soon.expires = now + absl::Seconds(10);
  ASSERT_THAT(registry->Put(soon, kPrefix), IsOk());
  ContextInput later = SyntheticContext(2, 2);
  later.expires = now + absl::Seconds(30);
  ASSERT_THAT(registry->Put(later, kPrefix), IsOk());
  ASSERT_THAT(registry->Put(SyntheticContext(3, 3), kPrefix), IsOk());
  EXPECT_EQ(registry->Get("ns", "doc-1")->expires, now + absl::Seconds(10));
  // Moved later before it passes.
  ASSERT_THAT(registry->Update("ns", "doc-2", {.expires = now + absl::Seconds(60)}), IsOk());

  now += absl::Seconds(11);
  // Invisible at once, to every reader.
  EXPECT_THAT(registry->Get("ns", "doc-1"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("expired")));
  EXPECT_THAT(registry->Load("ns", "doc-1", kPrefix),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("expired")));
  absl::StatusOr<ContextPage> page = registry->List("ns", {});
  ASSERT_THAT(page, IsOk());
  EXPECT_EQ(page->contexts.size(), 2);
  // Deleted, KV included, by the sweep.
  const uint64_t stored_before = registry->stats().store.entries;
  registry->Sweep();
  EXPECT_EQ(registry->stats().contexts_expired, 1);
  EXPECT_EQ(registry->stats().store.entries, stored_before - 1);
  EXPECT_THAT(registry->Delete("ns", "doc-1"), IsOkAndHolds(false));

  now += absl::Seconds(30);  // doc-2's first expiry has passed, its new one not
  registry->Sweep();
  EXPECT_THAT(registry->Get("ns", "doc-2"), IsOk());
  ASSERT_THAT(registry->Update("ns", "doc-2", {.expires = absl::InfiniteFuture()}), IsOk());
  now += absl::Hours(1);
  registry->Sweep();
  EXPECT_THAT(registry->Get("ns", "doc-2"), IsOk());
  EXPECT_EQ(registry->stats().contexts_expired, 1);
  // Deleting an expired context the sweep has not reached: it no longer existed.
  ContextInput other = SyntheticContext(4, 4);
  other.expires = now + absl::Seconds(1);
  ASSERT_THAT(registry->Put(other, kPrefix), IsOk());
  now += absl::Seconds(2);
  EXPECT_THAT(registry->Delete("ns", "doc-4"), IsOkAndHolds(false));
}

TEST(ContextRegistryTest, KeepsIdsTextAndLabelsThatAreNotUtf8) {
  TempDir dir;
  auto registry =
      OpenOrDie(RegistryOptions(dir.Join("data")), MakeSyntheticEncoder(kModelA).encoder);
  ContextInput input = SyntheticContext(1, 1);
  input.id = "caf\xe9 \xff";
  input.text = "\xc3\x28 not UTF-8";
  input.labels = {{"k\xfe", "v\xfd"}};
  ASSERT_THAT(registry->Put(input, kPrefix), IsOk());
  absl::StatusOr<StoredContext> document = registry->Get("ns", input.id);
  ASSERT_THAT(document, IsOk());
  EXPECT_EQ(document->id, input.id);
  EXPECT_EQ(document->text, input.text);
  EXPECT_EQ(document->labels, input.labels);
  EXPECT_THAT(registry->Load("ns", input.id, kPrefix), IsOk());
  EXPECT_THAT(registry->Delete("ns", input.id), testing::IsOkAndHolds(true));
  EXPECT_EQ(registry->stats().store.entries, 0U);
}

TEST(ContextRegistryTest, RefusesBadNamesAndEmptyDocuments) {
  TempDir dir;
  auto registry =
      OpenOrDie(RegistryOptions(dir.Join("data")), MakeSyntheticEncoder(kModelA).encoder);
  ContextInput bad = SyntheticContext(1, 1);
  bad.namespace_id = "has space";
  EXPECT_THAT(registry->Put(bad, kPrefix),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("namespace")));
  bad = SyntheticContext(1, 1);
  bad.id = std::string("a\0b", 3);
  EXPECT_THAT(registry->Put(bad, kPrefix),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NUL")));
  bad = SyntheticContext(1, 1);
  bad.tokens.clear();
  EXPECT_THAT(registry->Put(bad, kPrefix),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokens")));
  bad = SyntheticContext(1, 1);
  bad.labels[std::string(2000, 'k')] = "v";
  EXPECT_THAT(registry->Put(bad, kPrefix),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("label")));
  bad = SyntheticContext(1, 1);
  bad.tokens[1] = -3;
  EXPECT_THAT(registry->Put(bad, kPrefix),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("negative")));
  EXPECT_THAT(registry->Put(SyntheticContext(1, 1), "Not/AHash"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prefix hash")));
  EXPECT_THAT(registry->Load("ns", "missing", kPrefix),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing")));
  EXPECT_THAT(ContextRegistry::Open(RegistryOptions(dir.Join("x"), ""),
                                    MakeSyntheticEncoder(kModelA).encoder),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fingerprint")));
}

TEST(ContextRegistryTest, AnEncoderErrorReachesTheCallerAndStoresNothing) {
  TempDir dir;
  auto registry = OpenOrDie(
      RegistryOptions(dir.Join("data")),
      [](absl::string_view, absl::Span<const int32_t>) -> absl::StatusOr<model::KvSegment> {
        return absl::OutOfRangeError("too many tokens for the model");
      });
  EXPECT_THAT(registry->Put(SyntheticContext(1, 1), kPrefix),
              StatusIs(absl::StatusCode::kOutOfRange, HasSubstr("too many")));
  EXPECT_THAT(registry->Get("ns", "doc-1"), StatusIs(absl::StatusCode::kNotFound, ::testing::_));
}

// Another model (or prefix) never sees the old KV: it gets its own, rebuilt from the
// stored tokens, and the old model's entries are purged at open.
TEST(ContextRegistryTest, ReopeningWithAnotherModelNeverServesTheOldKv) {
  TempDir dir;
  {
    auto registry = OpenOrDie(RegistryOptions(dir.Join("data"), kModelA),
                              MakeSyntheticEncoder(kModelA).encoder);
    for (int n = 0; n < 5; ++n) ASSERT_THAT(registry->Put(SyntheticContext(n, n), kPrefix), IsOk());
  }
  auto encoder_b = MakeSyntheticEncoder(kModelB);
  auto registry = OpenOrDie(RegistryOptions(dir.Join("data"), kModelB), encoder_b.encoder);
  EXPECT_EQ(registry->stats().store.entries, 0U);
  for (int n = 0; n < 5; ++n) {
    absl::StatusOr<LoadedContext> loaded =
        registry->Load("ns", "doc-" + std::to_string(n), kPrefix);
    ASSERT_THAT(loaded, IsOk());
    EXPECT_EQ(loaded->source, KvSource::kRebuilt);
    ExpectSyntheticKv(*loaded, kModelB);
  }
  absl::StatusOr<LoadedContext> other_prefix = registry->Load("ns", "doc-0", "ffff0002");
  ASSERT_THAT(other_prefix, IsOk());
  EXPECT_EQ(other_prefix->source, KvSource::kRebuilt);
  ExpectSyntheticKv(*other_prefix, kModelB, "ffff0002");
  EXPECT_EQ(*encoder_b.calls, 6);
  EXPECT_EQ(registry->stats().rebuilds, 6U);
  EXPECT_EQ(registry->stats().store.entries, 6U);  // written back
}

TEST(ContextRegistryTest, RefusesDocumentsOfAnotherTokenizerAndAdoptsOneWhenEmpty) {
  TempDir dir;
  const auto options = [&dir](absl::string_view tokenizer) {
    ContextRegistryOptions with_tokenizer = RegistryOptions(dir.Join("data"), kModelA);
    with_tokenizer.tokenizer_fingerprint = std::string(tokenizer);
    return with_tokenizer;
  };
  auto encoder = MakeSyntheticEncoder(kModelA);
  {
    auto registry = OpenOrDie(options("aa01"), encoder.encoder);
    ASSERT_THAT(registry->Put(SyntheticContext(0, 0), kPrefix), IsOk());
  }
  EXPECT_THAT(ContextRegistry::Open(options("bb02"), encoder.encoder),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("tokenizer aa01"), HasSubstr("tokenizer is bb02"))));
  // Refusing changed nothing: the first tokenizer still opens it, the document whole.
  {
    auto registry = OpenOrDie(options("aa01"), encoder.encoder);
    ASSERT_THAT(registry->Get("ns", "doc-0"), IsOk());
    ASSERT_THAT(registry->Delete("ns", "doc-0"), IsOkAndHolds(true));
  }
  // Without documents, another tokenizer takes the store over, and is then the one held.
  {
    auto registry = OpenOrDie(options("bb02"), encoder.encoder);
    ASSERT_THAT(registry->Put(SyntheticContext(1, 1), kPrefix), IsOk());
  }
  EXPECT_THAT(ContextRegistry::Open(options("aa01"), encoder.encoder),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("tokenizer bb02")));
  // Not checked without a fingerprint; refused when the fingerprint is not a hash.
  EXPECT_THAT(ContextRegistry::Open(options(""), encoder.encoder), IsOk());
  EXPECT_THAT(ContextRegistry::Open(options("BB/02"), encoder.encoder),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokenizer fingerprint")));
}

// Raw access to the store under a closed registry, as a disk fault would see it.
template <typename Edit>
void EditStore(const std::string& path, Edit edit) {
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open({.path = path});
  ASSERT_THAT(store, IsOk());
  edit(**store);
}

std::vector<std::string> KeysOf(Store& store, rocksdb::ColumnFamilyHandle* family, char tag) {
  std::vector<std::string> keys;
  std::unique_ptr<rocksdb::Iterator> it(store.db().NewIterator(rocksdb::ReadOptions(), family));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (it->key()[0] == tag) keys.push_back(it->key().ToString());
  }
  return keys;
}

// Flips one random bit of one random byte of the value under `key`.
void FlipAByte(Store& store, rocksdb::ColumnFamilyHandle* family, const std::string& key,
               std::mt19937& random) {
  std::string value;
  ASSERT_TRUE(store.db().Get(rocksdb::ReadOptions(), family, key, &value).ok());
  const size_t at = std::uniform_int_distribution<size_t>(0, value.size() - 1)(random);
  value[at] =
      static_cast<char>(value[at] ^ (1 << std::uniform_int_distribution<int>(0, 7)(random)));
  ASSERT_TRUE(store.db().Put(rocksdb::WriteOptions(), family, key, value).ok());
}

TEST(ContextRegistryTest, EveryFlippedKvByteIsDetectedAndTheKvRebuiltExactly) {
  TempDir dir;
  const ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  auto encoder = MakeSyntheticEncoder(kModelA);
  ASSERT_THAT(OpenOrDie(options, encoder.encoder)->Put(SyntheticContext(1, 1), kPrefix), IsOk());
  std::mt19937 random(20261122);
  constexpr int kCases = 120;
  int flipped_records = 0;
  for (int i = 0; i < kCases; ++i) {
    EditStore(options.store.path, [&](Store& store) {
      std::vector<std::string> keys = KeysOf(store, store.kv(), 'l');
      keys.push_back(KeysOf(store, store.kv(), 'm').at(0));  // the entry record too
      ASSERT_EQ(keys.size(), 4U);                            // three layers and the record
      const size_t pick = std::uniform_int_distribution<size_t>(0, keys.size() - 1)(random);
      flipped_records += pick == keys.size() - 1 ? 1 : 0;
      FlipAByte(store, store.kv(), keys[pick], random);
    });
    auto registry = OpenOrDie(options, encoder.encoder);
    ASSERT_NE(registry, nullptr);
    absl::StatusOr<LoadedContext> loaded = registry->Load("ns", "doc-1", kPrefix);
    ASSERT_THAT(loaded, IsOk()) << "case " << i;
    EXPECT_EQ(loaded->source, KvSource::kRebuilt) << "case " << i;
    ExpectSyntheticKv(*loaded, kModelA);
    EXPECT_EQ(registry->stats().corrupt_kv, 1U) << "case " << i;
  }
  EXPECT_EQ(*encoder.calls, 1 + kCases);
  EXPECT_GT(flipped_records, 0);
}

TEST(ContextRegistryTest, AFlippedDocumentRecordGivesDataLossNeverACrash) {
  TempDir dir;
  const ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  auto encoder = MakeSyntheticEncoder(kModelA);
  ASSERT_THAT(OpenOrDie(options, encoder.encoder)->Put(SyntheticContext(1, 1), kPrefix), IsOk());
  const std::string key = ContextKey("ns", "doc-1");
  std::string original;
  EditStore(options.store.path, [&](Store& store) {
    ASSERT_TRUE(store.db().Get(rocksdb::ReadOptions(), store.docs(), key, &original).ok());
  });
  std::mt19937 random(7);
  for (int i = 0; i < 100; ++i) {
    EditStore(options.store.path, [&](Store& store) {
      ASSERT_TRUE(store.db().Put(rocksdb::WriteOptions(), store.docs(), key, original).ok());
      FlipAByte(store, store.docs(), key, random);
    });
    auto registry = OpenOrDie(options, encoder.encoder);
    ASSERT_NE(registry, nullptr);
    EXPECT_THAT(registry->Get("ns", "doc-1"),
                StatusIs(absl::StatusCode::kDataLoss, HasSubstr("doc-1")))
        << "case " << i;
    EXPECT_THAT(registry->Load("ns", "doc-1", kPrefix),
                StatusIs(absl::StatusCode::kDataLoss, ::testing::_))
        << "case " << i;
  }
  // A damaged document can still be replaced, or deleted.
  auto registry = OpenOrDie(options, encoder.encoder);
  ASSERT_THAT(registry->Put(SyntheticContext(1, 1), kPrefix), IsOk());
  EXPECT_THAT(registry->Load("ns", "doc-1", kPrefix), IsOk());
  EXPECT_THAT(registry->Delete("ns", "doc-1"), testing::IsOkAndHolds(true));
}

TEST(ContextRegistryTest, EvictionKeepsEveryTierWithinItsBudgetAndDocumentsSurvive) {
  TempDir dir;
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  const size_t one_kv = SyntheticKv(kModelA, kPrefix, SyntheticTokens(12), {}).TotalBytes();
  options.host_cache_bytes = 3 * one_kv;
  options.stored_kv_bytes = 5 * one_kv;
  auto encoder = MakeSyntheticEncoder(kModelA);
  auto registry = OpenOrDie(options, encoder.encoder);
  constexpr int kDocuments = 40;
  for (int n = 0; n < kDocuments; ++n) {
    ASSERT_THAT(registry->Put(SyntheticContext(n, n), kPrefix), IsOk());
    ASSERT_LE(registry->stats().store.bytes, options.stored_kv_bytes);
  }
  for (int round = 0; round < 2; ++round) {
    for (int n = 0; n < kDocuments; ++n) {
      absl::StatusOr<LoadedContext> loaded =
          registry->Load("ns", "doc-" + std::to_string(n), kPrefix);
      ASSERT_THAT(loaded, IsOk());
      ExpectSyntheticKv(*loaded, kModelA);
      const RegistryStats stats = registry->stats();
      ASSERT_LE(stats.host.bytes, options.host_cache_bytes);
      ASSERT_LE(stats.store.bytes, options.stored_kv_bytes);
    }
  }
  const RegistryStats stats = registry->stats();
  EXPECT_GT(stats.store.evictions, 0U);
  EXPECT_GT(stats.host.evictions, 0U);
  EXPECT_GT(stats.rebuilds, 0U);
  // Every document is still there, after a restart too.
  registry.reset();
  registry = OpenOrDie(options, encoder.encoder);
  EXPECT_LE(registry->stats().store.bytes, options.stored_kv_bytes);
  for (int n = 0; n < kDocuments; ++n) {
    absl::StatusOr<StoredContext> document = registry->Get("ns", "doc-" + std::to_string(n));
    ASSERT_THAT(document, IsOk());
    EXPECT_EQ(document->tokens, SyntheticTokens(n));
  }
}

TEST(ContextRegistryTest, IdleKvExpiresFromEveryTierAndIsRebuiltOnUse) {
  TempDir dir;
  absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  options.kv_ttl = absl::Minutes(10);
  options.clock = [&now] { return now; };
  auto encoder = MakeSyntheticEncoder(kModelA);
  auto registry = OpenOrDie(options, encoder.encoder);
  ASSERT_THAT(registry->Put(SyntheticContext(1, 1), kPrefix), IsOk());
  ASSERT_THAT(registry->Load("ns", "doc-1", kPrefix), IsOk());
  now += absl::Minutes(11);
  registry->Sweep();
  RegistryStats stats = registry->stats();
  EXPECT_EQ(stats.host.entries, 0U);
  EXPECT_EQ(stats.store.entries, 0U);
  EXPECT_EQ(stats.store.expirations, 1U);
  absl::StatusOr<LoadedContext> loaded = registry->Load("ns", "doc-1", kPrefix);
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->source, KvSource::kRebuilt);
  ExpectSyntheticKv(*loaded, kModelA);
  EXPECT_THAT(registry->Get("ns", "doc-1"), IsOk());

  // The sweep deleted the KV from RocksDB too, not only from the index.
  now += absl::Minutes(11);
  registry->Sweep();
  registry.reset();
  registry = OpenOrDie(options, encoder.encoder);
  EXPECT_EQ(registry->stats().store.entries, 0U);
}

// A document that shares expired KV gets fresh KV stored, not a reference to KV the
// sweep right after it would delete.
TEST(ContextRegistryTest, SharingExpiredKvStoresItAfresh) {
  TempDir dir;
  absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  options.kv_ttl = absl::Minutes(10);
  options.clock = [&now] { return now; };
  options.write_through = false;  // the load below must come from the store
  auto encoder = MakeSyntheticEncoder(kModelA);
  auto registry = OpenOrDie(options, encoder.encoder);
  ASSERT_THAT(registry->Put(SyntheticContext(1, 5), kPrefix), IsOk());
  now += absl::Minutes(11);
  ASSERT_THAT(registry->Put(SyntheticContext(2, 5), kPrefix), IsOk());
  EXPECT_EQ(*encoder.calls, 2);
  EXPECT_EQ(registry->stats().kv_shared, 0U);
  absl::StatusOr<LoadedContext> loaded = registry->Load("ns", "doc-2", kPrefix);
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->source, KvSource::kStore);
}

TEST(ContextRegistryTest, TheDeviceTierServesRepeatedLoadsWithinItsBudget) {
  TempDir dir;
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  auto kv_bytes = [](int n) {
    return SyntheticKv(kModelA, kPrefix, SyntheticTokens(n), {}).TotalBytes();
  };
  options.device_cache_bytes = kv_bytes(3) + kv_bytes(2);  // documents 0..3 hold 3..6 tokens
  auto uploads = std::make_shared<std::atomic<int>>(0);
  // A stand-in device: another copy in memory, counted in its own budget.
  DeviceUploader uploader =
      [uploads](const model::EncodedContext& host) -> absl::StatusOr<DeviceCopy> {
    uploads->fetch_add(1);
    auto copy = std::make_shared<const model::EncodedContext>(host);
    return DeviceCopy{copy, host.kv.TotalBytes()};
  };
  absl::StatusOr<std::unique_ptr<ContextRegistry>> registry =
      ContextRegistry::Open(options, MakeSyntheticEncoder(kModelA).encoder, uploader);
  ASSERT_THAT(registry, IsOk());
  for (int n = 0; n < 4; ++n)
    ASSERT_THAT((*registry)->Put(SyntheticContext(n, n), kPrefix), IsOk());
  absl::StatusOr<LoadedContext> first = (*registry)->Load("ns", "doc-3", kPrefix);
  ASSERT_THAT(first, IsOk());
  EXPECT_EQ(first->source, KvSource::kHost);  // written through by the Put
  absl::StatusOr<LoadedContext> second = (*registry)->Load("ns", "doc-3", kPrefix);
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(second->source, KvSource::kDevice);
  EXPECT_EQ(second->context, first->context);
  ExpectSyntheticKv(*second, kModelA);
  for (int n = 0; n < 4; ++n) {
    ASSERT_THAT((*registry)->Load("ns", "doc-" + std::to_string(n), kPrefix), IsOk());
    ASSERT_LE((*registry)->stats().device.bytes, options.device_cache_bytes);
  }
  // doc-3 was evicted by the time the loop came back to it.
  EXPECT_EQ((*registry)->stats().device.hits, 1U);
  EXPECT_EQ((*registry)->stats().device.evictions, 3U);
  EXPECT_EQ(*uploads, 5);
}

// Many threads put, load and delete over a few names and contents at once, with
// budgets small enough that eviction runs all the time. Every load must be
// self-consistent (its KV is the model's KV of its tokens). Run under ThreadSanitizer
// by the tsan preset.
TEST(ContextRegistryTest, ConcurrentPutsLoadsAndDeletesStayConsistent) {
  TempDir dir;
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  const size_t one_kv = SyntheticKv(kModelA, kPrefix, SyntheticTokens(12), {}).TotalBytes();
  options.host_cache_bytes = 3 * one_kv;
  options.stored_kv_bytes = 4 * one_kv;
  options.device_cache_bytes = 2 * one_kv;
  DeviceUploader uploader = [](const model::EncodedContext& host) -> absl::StatusOr<DeviceCopy> {
    return DeviceCopy{std::make_shared<const model::EncodedContext>(host), host.kv.TotalBytes()};
  };
  absl::StatusOr<std::unique_ptr<ContextRegistry>> opened =
      ContextRegistry::Open(options, MakeSyntheticEncoder(kModelA).encoder, uploader);
  ASSERT_THAT(opened, IsOk());
  ContextRegistry& registry = **opened;
  constexpr int kThreads = 8;
  constexpr int kOperations = 150;
  std::atomic<int> failures{0};
  std::atomic<int> loads{0};
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(static_cast<unsigned>(t));
      for (int i = 0; i < kOperations; ++i) {
        const int n = std::uniform_int_distribution<int>(0, 9)(random);
        const std::string id = "doc-" + std::to_string(n);
        switch (std::uniform_int_distribution<int>(0, 5)(random)) {
          case 0:
          case 1:
            if (!registry
                     .Put(SyntheticContext(n, std::uniform_int_distribution<int>(0, 5)(random)),
                          kPrefix)
                     .ok()) {
              failures.fetch_add(1);
            }
            break;
          case 2:
            if (!registry.Delete("ns", id).ok()) failures.fetch_add(1);
            break;
          default: {
            absl::StatusOr<LoadedContext> loaded = registry.Load("ns", id, kPrefix);
            if (loaded.ok()) {
              loads.fetch_add(1);
              const model::EncodedContext& context = *loaded->context;
              if (context.kv.layers != SyntheticKv(kModelA, kPrefix, context.tokens, {}).layers) {
                failures.fetch_add(1);
              }
            } else if (loaded.status().code() != absl::StatusCode::kNotFound) {
              failures.fetch_add(1);
            }
            if (i % 25 == 0) registry.Sweep();
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(loads.load(), 0);
  const RegistryStats stats = registry.stats();
  EXPECT_LE(stats.host.bytes, options.host_cache_bytes);
  EXPECT_LE(stats.store.bytes, options.stored_kv_bytes);
  EXPECT_LE(stats.device.bytes, options.device_cache_bytes);
  // Nothing was ever found damaged: concurrent writes are never seen half done.
  EXPECT_EQ(stats.corrupt_kv, 0U);
  // Once quiet, and after a restart: the survivors load consistently, and no KV is
  // left that no document references.
  opened->reset();
  opened = ContextRegistry::Open(options, MakeSyntheticEncoder(kModelA).encoder, uploader);
  ASSERT_THAT(opened, IsOk());
  std::set<std::string> live_contents;
  for (int n = 0; n < 10; ++n) {
    const std::string id = "doc-" + std::to_string(n);
    absl::StatusOr<LoadedContext> loaded = (*opened)->Load("ns", id, kPrefix);
    if (loaded.ok()) {
      ExpectSyntheticKv(*loaded, kModelA);
      live_contents.insert(ContentHash(loaded->context->tokens, ""));
    } else {
      EXPECT_THAT(loaded, StatusIs(absl::StatusCode::kNotFound, HasSubstr(id)));
    }
  }
  EXPECT_LE((*opened)->stats().store.entries, live_contents.size());
}

TEST(ContextRegistryTest, PutWritesTheKvThroughToTheHostTier) {
  for (const bool write_through : {true, false}) {
    SCOPED_TRACE(write_through ? "write-through" : "store only");
    TempDir dir;
    ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
    options.write_through = write_through;
    auto encoder = MakeSyntheticEncoder(kModelA);
    auto registry = OpenOrDie(options, encoder.encoder);
    ASSERT_NE(registry, nullptr);
    // Encoded by the registry, and given by the caller.
    ASSERT_THAT(registry->Put(SyntheticContext(1, 1), kPrefix), IsOk());
    const ContextInput given = SyntheticContext(2, 2);
    const model::KvSegment kv = SyntheticKv(kModelA, kPrefix, given.tokens, {});
    ASSERT_THAT(registry->Put(given, kPrefix, &kv), IsOk());
    EXPECT_TRUE(registry->HasKv(given, kPrefix));
    for (const char* id : {"doc-1", "doc-2"}) {
      absl::StatusOr<LoadedContext> loaded = registry->Load("ns", id, kPrefix);
      ASSERT_THAT(loaded, IsOk());
      EXPECT_EQ(loaded->source, write_through ? KvSource::kHost : KvSource::kStore) << id;
      ExpectSyntheticKv(*loaded, kModelA);
    }
    EXPECT_EQ(registry->stats().store.hits, write_through ? 0U : 2U) << "disk reads";
    EXPECT_EQ(*encoder.calls, 1);
    // A delete forgets what was written through.
    ASSERT_THAT(registry->Delete("ns", "doc-1"), IsOk());
    EXPECT_FALSE(registry->HasKv(SyntheticContext(1, 1), kPrefix));
  }
}

}  // namespace
}  // namespace apeserve::cache
