// The registry with the real engine as its encoder: KV computed by the model goes into
// RocksDB and comes back bit for bit, a query over loaded KV gives exactly the logits of
// a query over freshly encoded KV, damaged KV is rebuilt by the model to the same bytes,
// and int8 storage moves the logits by no more than the README's table says.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cache/context_registry.h"
#include "cache/store.h"
#include "cache/store_keys.h"
#include "model/engine.h"
#include "model/prompt_pieces.h"
#include "rocksdb/db.h"
#include "tests/util/status_matchers.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_paths.h"

namespace apeserve::cache {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::TempDir;

const std::vector<std::string> kDocuments = {
    "The lighthouse of Varn was built in 1841 by the engineer Osric Dale.",
    "Tessaly is a river town whose mayor, Ilse Marrow, keeps forty goats.",
    "The comet Ferrin-3 returns every 211 years; it was last seen in 1902.",
    "Blue copper ore from the Harth mines is smelted only in the winter months.",
};

class RegistryEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model::EngineOptions options;
    options.model_path = testing::TestModelPath();
    options.device = "cpu";
    options.dtype = "float32";
    auto loaded = model::Engine::Load(options);
    ASSERT_THAT(loaded, IsOk());
    engine_ = loaded->release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(engine_, nullptr);
    auto chat = engine_->chat_template();
    ASSERT_THAT(chat, IsOk());
    pieces_ = std::make_unique<model::PromptPieces>(engine_->tokenizer(), **chat);
    auto prefix = engine_->EncodePrefix(pieces_->Prefix("You answer from the documents."));
    ASSERT_THAT(prefix, IsOk());
    prefix_ = *std::move(prefix);
  }

  ContextRegistryOptions Options(KvQuantization quantization = KvQuantization::kNone) const {
    ContextRegistryOptions options;
    options.store.path = dir_.Join("data");
    options.model_fingerprint = engine_->fingerprint();
    options.sync_writes = false;
    options.kv_quantization = quantization;
    options.host_cache_bytes = 0;  // every load reads RocksDB
    return options;
  }

  // The engine as the registry's encoder, counting its calls.
  KvEncoder Encoder() {
    return [this](absl::string_view prefix_hash,
                  absl::Span<const int32_t> tokens) -> absl::StatusOr<model::KvSegment> {
      ++encodes_;
      if (prefix_hash != prefix_.hash) return absl::NotFoundError("unknown prefix");
      auto context = engine_->EncodeContext(prefix_, tokens);
      if (!context.ok()) return context.status();
      return std::move(context->kv);
    };
  }

  std::unique_ptr<ContextRegistry> Open(const ContextRegistryOptions& options) {
    auto registry = ContextRegistry::Open(options, Encoder());
    EXPECT_THAT(registry, IsOk());
    return registry.ok() ? *std::move(registry) : nullptr;
  }

  void PutAll(ContextRegistry& registry) {
    for (size_t i = 0; i < kDocuments.size(); ++i) {
      ASSERT_THAT(registry.Put({.namespace_id = "ns",
                                .id = "doc-" + std::to_string(i),
                                .tokens = pieces_->Context(kDocuments[i]),
                                .text = kDocuments[i],
                                .labels = {}},
                               prefix_.hash),
                  IsOk());
    }
  }

  // Loads every document; `expected`, when given, is where each must come from.
  std::vector<std::shared_ptr<const model::EncodedContext>> LoadAll(
      ContextRegistry& registry, std::optional<KvSource> expected) {
    std::vector<std::shared_ptr<const model::EncodedContext>> contexts;
    for (size_t i = 0; i < kDocuments.size(); ++i) {
      auto loaded = registry.Load("ns", "doc-" + std::to_string(i), prefix_.hash);
      EXPECT_THAT(loaded, IsOk());
      if (!loaded.ok()) continue;
      if (expected.has_value()) {
        EXPECT_EQ(loaded->source, *expected) << "document " << i;
      }
      contexts.push_back(loaded->context);
    }
    return contexts;
  }

  // The next-token log-probabilities after the query, with the contexts under APE.
  std::vector<float> QueryLogProbs(const std::vector<const model::EncodedContext*>& contexts) {
    model::ApeOptions ape;
    ape.temperature = 0.8F;
    ape.scale = 0.9F;
    auto sequence = engine_->StartSequence(prefix_, contexts, ape);
    EXPECT_THAT(sequence, IsOk());
    if (!sequence.ok()) return {};
    auto logits = engine_->Feed(**sequence, pieces_->Query("When was the lighthouse built?"));
    EXPECT_THAT(logits, IsOk());
    if (!logits.ok()) return {};
    const float max = *std::max_element(logits->begin(), logits->end());
    double sum = 0;
    for (const float x : *logits) sum += std::exp(x - max);
    std::vector<float> log_probs(logits->size());
    for (size_t i = 0; i < logits->size(); ++i) {
      log_probs[i] = static_cast<float>((*logits)[i] - max - std::log(sum));
    }
    return log_probs;
  }

  std::vector<model::EncodedContext> EncodeFresh() const {
    std::vector<model::EncodedContext> fresh;
    for (const std::string& document : kDocuments) {
      auto context = engine_->EncodeContext(prefix_, pieces_->Context(document));
      EXPECT_THAT(context, IsOk());
      if (context.ok()) fresh.push_back(*std::move(context));
    }
    return fresh;
  }

  template <typename T>
  static std::vector<const model::EncodedContext*> Pointers(const std::vector<T>& contexts) {
    std::vector<const model::EncodedContext*> out;
    for (const auto& context : contexts) {
      if constexpr (std::is_same_v<T, model::EncodedContext>) {
        out.push_back(&context);
      } else {
        out.push_back(context.get());
      }
    }
    return out;
  }

  static inline model::Engine* engine_ = nullptr;
  TempDir dir_;
  std::unique_ptr<model::PromptPieces> pieces_;
  model::EncodedPrefix prefix_;
  int encodes_ = 0;
};

TEST_F(RegistryEngineTest, StoredKvIsBitIdenticalAndGivesExactlyTheSameLogits) {
  PutAll(*Open(Options()));
  EXPECT_EQ(encodes_, static_cast<int>(kDocuments.size()));
  auto registry = Open(Options());
  const auto loaded = LoadAll(*registry, KvSource::kStore);
  const std::vector<model::EncodedContext> fresh = EncodeFresh();
  ASSERT_EQ(loaded.size(), fresh.size());
  for (size_t i = 0; i < fresh.size(); ++i) {
    EXPECT_EQ(loaded[i]->tokens, fresh[i].tokens);
    EXPECT_EQ(loaded[i]->kv.layers, fresh[i].kv.layers) << "document " << i;
    EXPECT_EQ(loaded[i]->kv.start_position, fresh[i].kv.start_position);
  }
  EXPECT_EQ(QueryLogProbs(Pointers(loaded)), QueryLogProbs(Pointers(fresh)));
  EXPECT_EQ(encodes_, static_cast<int>(kDocuments.size()));  // nothing recomputed
}

TEST_F(RegistryEngineTest, DamagedKvIsRebuiltByTheModelToTheSameBytes) {
  PutAll(*Open(Options()));
  const std::vector<model::EncodedContext> fresh = EncodeFresh();
  std::mt19937 random(3);
  for (int round = 0; round < 5; ++round) {
    std::set<std::string> damaged_entries;
    const int encodes_before = encodes_;
    {
      auto store = Store::Open(Options().store);
      ASSERT_THAT(store, IsOk());
      // Damage two random layer values (maybe of the same document).
      std::vector<std::string> layer_keys;
      std::unique_ptr<rocksdb::Iterator> it(
          (*store)->db().NewIterator(rocksdb::ReadOptions(), (*store)->kv()));
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        if (it->key()[0] == 'l') layer_keys.push_back(it->key().ToString());
      }
      ASSERT_FALSE(layer_keys.empty());
      for (int k = 0; k < 2; ++k) {
        const std::string& key =
            layer_keys[std::uniform_int_distribution<size_t>(0, layer_keys.size() - 1)(random)];
        // The entry's name ends 5 bytes before the key does ("/" and the layer).
        damaged_entries.insert(key.substr(0, key.size() - 5));
        std::string value;
        ASSERT_TRUE((*store)->db().Get(rocksdb::ReadOptions(), (*store)->kv(), key, &value).ok());
        value[std::uniform_int_distribution<size_t>(0, value.size() - 1)(random)] ^= 0x10;
        ASSERT_TRUE((*store)->db().Put(rocksdb::WriteOptions(), (*store)->kv(), key, value).ok());
      }
    }
    auto registry = Open(Options());
    const auto loaded = LoadAll(*registry, std::nullopt);
    ASSERT_EQ(loaded.size(), fresh.size());
    for (size_t i = 0; i < fresh.size(); ++i) {
      EXPECT_EQ(loaded[i]->kv.layers, fresh[i].kv.layers) << "round " << round << " document " << i;
    }
    EXPECT_EQ(registry->stats().corrupt_kv, damaged_entries.size());
    EXPECT_EQ(registry->stats().rebuilds, damaged_entries.size());
    EXPECT_EQ(encodes_ - encodes_before, static_cast<int>(damaged_entries.size()));
  }
}

// The device tier with the engine's ToDevice as its uploader: the second load comes
// from the device and the query's logits are exactly those of freshly encoded KV.
TEST_F(RegistryEngineTest, TheDeviceTierHoldsTheEnginesDeviceCopies) {
  ContextRegistryOptions options = Options();
  options.device_cache_bytes = size_t{1} << 30;
  DeviceUploader uploader = [](const model::EncodedContext& host) -> absl::StatusOr<DeviceCopy> {
    auto copied = engine_->ToDevice(host);
    if (!copied.ok()) return copied.status();
    const size_t bytes = copied->device->bytes();
    return DeviceCopy{std::make_shared<const model::EncodedContext>(*std::move(copied)), bytes};
  };
  auto registry = ContextRegistry::Open(options, Encoder(), uploader);
  ASSERT_THAT(registry, IsOk());
  PutAll(**registry);
  LoadAll(**registry, KvSource::kStore);
  const auto loaded = LoadAll(**registry, KvSource::kDevice);
  for (const auto& context : loaded) EXPECT_NE(context->device, nullptr);
  EXPECT_EQ(QueryLogProbs(Pointers(loaded)), QueryLogProbs(Pointers(EncodeFresh())));
  const RegistryStats stats = (*registry)->stats();
  EXPECT_EQ(stats.device.entries, kDocuments.size());
  EXPECT_EQ(stats.device.hits, kDocuments.size());
  EXPECT_LE(stats.device.bytes, options.device_cache_bytes);
}

// int8 storage: per channel and per token. The figures go to the test's XML properties
// and the README; the bounds here are the README's documented ones.
TEST_F(RegistryEngineTest, Int8KvMovesTheLogitsWithinTheDocumentedBounds) {
  const std::vector<float> exact = QueryLogProbs(Pointers(EncodeFresh()));
  for (const KvQuantization quantization :
       {KvQuantization::kInt8PerChannel, KvQuantization::kInt8PerToken}) {
    std::filesystem::remove_all(dir_.Join("data"));
    PutAll(*Open(Options(quantization)));
    auto registry = Open(Options(quantization));
    const std::vector<float> quantized =
        QueryLogProbs(Pointers(LoadAll(*registry, KvSource::kStore)));
    ASSERT_EQ(quantized.size(), exact.size());
    double kl = 0;
    float max_delta = 0;
    for (size_t i = 0; i < exact.size(); ++i) {
      kl += std::exp(exact[i]) * (exact[i] - quantized[i]);
      max_delta = std::max(max_delta, std::abs(exact[i] - quantized[i]));
    }
    const auto argmax = [](const std::vector<float>& v) {
      return std::max_element(v.begin(), v.end()) - v.begin();
    };
    const std::string name(KvQuantizationName(quantization));
    RecordProperty(name + "_kl", std::to_string(kl));
    RecordProperty(name + "_max_abs_logprob_delta", std::to_string(max_delta));
    std::printf("%s: KL(float || int8) = %.2e, max |delta log p| = %.3f, stored %llu bytes\n",
                name.c_str(), kl, max_delta,
                static_cast<unsigned long long>(registry->stats().store.bytes));
    EXPECT_GT(kl, 0) << name << ": the KV was not really quantized";
    EXPECT_LT(kl, 1e-3) << name;
    EXPECT_LT(max_delta, 0.3F) << name;
    EXPECT_EQ(argmax(quantized), argmax(exact)) << name;
  }
}

}  // namespace
}  // namespace apeserve::cache
