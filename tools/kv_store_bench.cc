// kv_store_bench: measures the KV store on real KV from the model, to choose and
// document the store's settings (README, "Storage"). Every figure is a ratio against a
// baseline measured in the same run: the on-disk size against the raw KV bytes, and
// the warm load throughput from RocksDB against a plain memcpy of the same bytes.
//
//   kv_store_bench --model=FILE [--documents=16 --tokens=256 --rounds=5 --dir=/tmp/x]
//
// For each KV compression x storage quantization it ingests the documents (with their
// KV precomputed once, so the engine's time is not counted), flushes, reopens, reads
// every document's KV back from RocksDB `rounds` times (the first round warms the OS
// page cache and is not counted) and prints one markdown row.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "cache/context_registry.h"
#include "model/engine.h"
#include "model/prompt_pieces.h"

ABSL_FLAG(std::string, model, "", "GGUF model file (required)");
ABSL_FLAG(std::string, dtype, "float32", "compute and KV dtype: float32 or bfloat16");
ABSL_FLAG(int, documents, 16, "documents to store");
ABSL_FLAG(int, tokens, 256, "tokens per document (about)");
ABSL_FLAG(int, rounds, 5, "load rounds; the first only warms the page cache");
ABSL_FLAG(std::string, dir, "", "scratch folder (default: a new one under /tmp)");

namespace apeserve {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

[[noreturn]] void Die(const absl::Status& status, const char* what) {
  std::fprintf(stderr, "kv_store_bench: %s: %s\n", what, status.ToString().c_str());
  std::exit(1);
}

// Bytes of the store's table and blob files: what it keeps once the write-ahead log,
// which RocksDB drops after a flush, is gone.
uint64_t StoredBytes(const std::string& path) {
  uint64_t bytes = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(path)) {
    const std::string extension = entry.path().extension().string();
    if (entry.is_regular_file() && (extension == ".sst" || extension == ".blob")) {
      bytes += entry.file_size();
    }
  }
  return bytes;
}

// Made-up prose of about `words` words: varied enough that the KV is not repetitive.
std::string Prose(std::mt19937& random, int words) {
  static const char* const kWords[] = {
      "river",   "lantern",  "copper",  "winter",   "engineer", "market", "signal", "harbour",
      "orchard", "ledger",   "comet",   "granite",  "festival", "mayor",  "bridge", "archive",
      "seventy", "northern", "quietly", "measured", "borrowed", "silver", "eleven", "clock"};
  std::string text;
  for (int i = 0; i < words; ++i) {
    text += kWords[std::uniform_int_distribution<size_t>(0, std::size(kWords) - 1)(random)];
    text += (i % 11 == 10) ? ". " : " ";
  }
  return text;
}

struct Document {
  cache::ContextInput input;
  model::KvSegment kv;
};

struct Setting {
  cache::KvCompression compression = cache::KvCompression::kNone;
  cache::KvQuantization quantization = cache::KvQuantization::kNone;
  size_t write_buffer_bytes = cache::StoreOptions().kv_write_buffer_bytes;
  bool sync = true;
};

struct Figures {
  double disk_ratio = 0;
  double ingest_mb_s = 0;
  double load_mb_s = 0;
};

// Ingests every document under `setting` into a fresh store, flushes, reopens and loads
// them `rounds` times (the first round not counted).
Figures Measure(const Setting& setting, const std::vector<Document>& documents, double raw_mb,
                const model::Engine& engine, const std::string& prefix_hash,
                const std::string& scratch, int rounds) {
  std::filesystem::remove_all(scratch);
  cache::ContextRegistryOptions options;
  options.store.path = scratch;
  options.store.kv_compression = setting.compression;
  options.store.kv_write_buffer_bytes = setting.write_buffer_bytes;
  options.model_fingerprint = engine.fingerprint();
  options.kv_quantization = setting.quantization;
  options.sync_writes = setting.sync;
  options.host_cache_bytes = 0;  // every load reads RocksDB
  const cache::KvEncoder never = [](absl::string_view,
                                    absl::Span<const int32_t>) -> absl::StatusOr<model::KvSegment> {
    return absl::InternalError("kv_store_bench gives every KV; nothing is encoded");
  };
  Figures figures;
  {
    auto registry = cache::ContextRegistry::Open(options, never);
    if (!registry.ok()) Die(registry.status(), "open the store");
    const auto start = Clock::now();
    for (const Document& document : documents) {
      auto stored = (*registry)->Put(document.input, prefix_hash, &document.kv);
      if (!stored.ok()) Die(stored.status(), "store a document");
    }
    figures.ingest_mb_s = raw_mb / Seconds(start);
    if (auto flushed = (*registry)->Flush(); !flushed.ok()) Die(flushed, "flush");
  }
  figures.disk_ratio = static_cast<double>(StoredBytes(scratch)) / 1e6 / raw_mb;
  auto registry = cache::ContextRegistry::Open(options, never);
  if (!registry.ok()) Die(registry.status(), "reopen the store");
  double load_seconds = 0;
  for (int round = 0; round < rounds; ++round) {
    const auto start = Clock::now();
    for (const Document& document : documents) {
      auto loaded = (*registry)->Load("bench", document.input.id, prefix_hash);
      if (!loaded.ok()) Die(loaded.status(), "load a document");
    }
    if (round > 0) load_seconds += Seconds(start);
  }
  figures.load_mb_s = raw_mb * (rounds - 1) / load_seconds;
  return figures;
}

int Run() {
  model::EngineOptions engine_options;
  engine_options.model_path = absl::GetFlag(FLAGS_model);
  engine_options.device = "cpu";
  engine_options.dtype = absl::GetFlag(FLAGS_dtype);
  auto engine = model::Engine::Load(engine_options);
  if (!engine.ok()) Die(engine.status(), "load the model");
  auto chat = (*engine)->chat_template();
  if (!chat.ok()) Die(chat.status(), "chat template");
  const model::PromptPieces pieces((*engine)->tokenizer(), **chat);
  auto prefix = (*engine)->EncodePrefix(pieces.Prefix("You answer from the documents."));
  if (!prefix.ok()) Die(prefix.status(), "encode the prefix");

  std::mt19937 random(42);
  std::vector<Document> documents;
  uint64_t raw_bytes = 0;
  const auto encode_start = Clock::now();
  for (int i = 0; i < absl::GetFlag(FLAGS_documents); ++i) {
    std::vector<int32_t> tokens =
        pieces.Context(Prose(random, absl::GetFlag(FLAGS_tokens) * 3 / 4));
    auto context = (*engine)->EncodeContext(*prefix, tokens);
    if (!context.ok()) Die(context.status(), "encode a document");
    raw_bytes += context->kv.TotalBytes();
    documents.push_back({{.namespace_id = "bench",
                          .id = absl::StrCat("doc-", i),
                          .tokens = std::move(tokens),
                          .text = "",
                          .labels = {}},
                         std::move(context->kv)});
  }
  const double encode_seconds = Seconds(encode_start);
  const double raw_mb = static_cast<double>(raw_bytes) / 1e6;
  std::printf(
      "# kv_store_bench: %zu documents, %.1f MiB of %s KV, encoded in %.2f s "
      "(%.0f MB/s of KV from the model)\n\n",
      documents.size(), raw_mb / 1.048576, absl::GetFlag(FLAGS_dtype).c_str(), encode_seconds,
      raw_mb / encode_seconds);

  // The baseline: the same bytes copied with memcpy, warm, as many rounds.
  const int rounds = std::max(2, absl::GetFlag(FLAGS_rounds));
  std::vector<std::string> targets;
  for (const Document& document : documents) {
    for (const std::string& layer : document.kv.layers) targets.emplace_back(layer.size(), '\0');
  }
  double memcpy_seconds = 0;
  for (int round = 0; round < rounds; ++round) {
    const auto start = Clock::now();
    size_t t = 0;
    for (const Document& document : documents) {
      for (const std::string& layer : document.kv.layers) {
        std::memcpy(targets[t++].data(), layer.data(), layer.size());
      }
    }
    if (round > 0) memcpy_seconds += Seconds(start);
  }
  const double memcpy_mb_s = raw_mb * (rounds - 1) / memcpy_seconds;

  std::string scratch = absl::GetFlag(FLAGS_dir);
  if (scratch.empty()) scratch = std::filesystem::temp_directory_path() / "kv_store_bench";
  const auto measure = [&](const Setting& setting) {
    return Measure(setting, documents, raw_mb, **engine, prefix->hash, scratch, rounds);
  };
  measure(Setting{});  // warm-up: the first store in a process pays for fresh memory

  std::printf(
      "| compression | storage | on disk / raw | ingest MB/s (sync) | warm load MB/s "
      "| load / memcpy |\n|---|---|---|---|---|---|\n");
  for (const cache::KvCompression compression :
       {cache::KvCompression::kNone, cache::KvCompression::kLz4, cache::KvCompression::kZstd}) {
    for (const cache::KvQuantization quantization :
         {cache::KvQuantization::kNone, cache::KvQuantization::kInt8PerChannel,
          cache::KvQuantization::kInt8PerToken}) {
      const Figures figures = measure({.compression = compression, .quantization = quantization});
      std::printf("| %s | %s | %.3f | %.0f | %.0f | %.3f |\n",
                  std::string(cache::KvCompressionName(compression)).c_str(),
                  std::string(cache::KvQuantizationName(quantization)).c_str(), figures.disk_ratio,
                  figures.ingest_mb_s, figures.load_mb_s, figures.load_mb_s / memcpy_mb_s);
      std::fflush(stdout);
    }
  }

  std::printf(
      "\n| KV write buffer | ingest MB/s (sync) | ingest MB/s (no sync) |\n|---|---|---|\n");
  for (const size_t megabytes : {8, 16, 64, 256}) {
    const size_t bytes = megabytes << 20;
    const Figures synced = measure({.write_buffer_bytes = bytes, .sync = true});
    const Figures unsynced = measure({.write_buffer_bytes = bytes, .sync = false});
    std::printf("| %zu MiB | %.0f | %.0f |\n", megabytes, synced.ingest_mb_s, unsynced.ingest_mb_s);
    std::fflush(stdout);
  }
  std::printf("\nmemcpy of the same bytes (warm): %.0f MB/s\n", memcpy_mb_s);
  std::filesystem::remove_all(scratch);
  return 0;
}

}  // namespace
}  // namespace apeserve

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Measures the KV store against memcpy on real KV.\n  kv_store_bench --model=FILE");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_model).empty()) {
    std::fprintf(stderr, "kv_store_bench: --model is required\n");
    return 2;
  }
  return apeserve::Run();
}
