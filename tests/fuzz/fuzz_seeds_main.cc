// Writes the seed corpora of the fuzzers (tests/fuzz/*_fuzzer.cc), one folder per
// target, from the formats' own writers and the tests' examples, so that no binary
// seed lives in the repository. With a GGUF model (the default model), also seeds cut
// down from its real metadata and vocabulary: every key, the chat template, and the
// first tokens with the merges among them.
//
// Usage: fuzz_seeds OUT_DIR [MODEL.gguf]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "ape/v1/generation.pb.h"
#include "cache/framed_record.h"
#include "cache/kv_blob.h"
#include "cache/kv_quantization.h"
#include "cache/records.pb.h"
#include "cache/store_keys.h"
#include "cache/stored_context.h"
#include "model/byte_level.h"
#include "model/gguf_file.h"
#include "model/kv_segment.h"
#include "tests/model/gguf_builder.h"

namespace apeserve::fuzz {
namespace {

using ::apeserve::testing::GgufBuilder;

class SeedWriter {
 public:
  explicit SeedWriter(std::filesystem::path root) : root_(std::move(root)) {}

  void Write(const std::string& target, const std::string& name, const std::string& bytes) {
    const std::filesystem::path dir = root_ / target;
    std::filesystem::create_directories(dir);
    std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "fuzz_seeds: cannot write %s/%s\n", target.c_str(), name.c_str());
      failed_ = true;
    }
    ++written_;
  }

  bool failed() const { return failed_; }
  int written() const { return written_; }

 private:
  std::filesystem::path root_;
  bool failed_ = false;
  int written_ = 0;
};

std::string U32(uint32_t value) {
  std::string out;
  GgufBuilder::AppendU32(out, value);
  return out;
}

std::string U64(uint64_t value) {
  std::string out;
  GgufBuilder::AppendU64(out, value);
  return out;
}

std::string Str(absl::string_view value) {
  std::string out;
  GgufBuilder::AppendString(out, value);
  return out;
}

// A GGUF array value (type 9): element type, count, then the elements' bytes.
std::string Array(uint32_t element_type, uint64_t count, const std::string& elements) {
  return U32(element_type) + U64(count) + elements;
}

// Fields separated by NUL bytes, as tokenizer_json_fuzzer.cc splits its input.
std::string Fields(const std::vector<std::string>& fields) {
  std::string out;
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) out.push_back('\0');
    out += fields[i];
  }
  return out;
}

// The byte alphabet of GPT-2: the 256 single-byte tokens of a byte-level vocabulary.
std::vector<std::string> ByteTokens() {
  std::vector<std::string> tokens;
  tokens.reserve(256);
  for (int b = 0; b < 256; ++b) tokens.push_back(model::ByteSpelling(static_cast<uint8_t>(b)));
  return tokens;
}

// --- GGUF -----------------------------------------------------------------------------

constexpr char kChatMlTemplate[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// Hyper-parameters of a tiny Llama.
GgufBuilder& TinyLlama(GgufBuilder& b) {
  return b.String("general.architecture", "llama")
      .Uint32("llama.embedding_length", 64)
      .Uint32("llama.feed_forward_length", 128)
      .Uint32("llama.block_count", 2)
      .Uint32("llama.attention.head_count", 4)
      .Uint32("llama.attention.head_count_kv", 2)
      .Uint32("llama.context_length", 256)
      .Float32("llama.attention.layer_norm_rms_epsilon", 1e-5F)
      .Float32("llama.rope.freq_base", 10000.0F)
      .Uint32("llama.rope.dimension_count", 16);
}

void GgufSeeds(SeedWriter& out) {
  // Byte-level BPE with added tokens, a chat template and tensors of several types.
  std::vector<std::string> tokens = ByteTokens();
  tokens.insert(tokens.end(), {"ab", "abc", "<|im_start|>", "<|im_end|>", "<|endoftext|>"});
  std::string types;
  for (size_t id = 0; id < tokens.size(); ++id) types += U32(id >= 258 ? 3 : 1);
  // 64 float32, 32 float16, one Q4_0 block and one Q8_0 block.
  std::string f32(256, '\0'), f16(64, '\0'), q4_0(18, '\x11'), q8_0(34, '\x22');
  for (size_t i = 0; i < f32.size(); i += 4) f32[i + 3] = '\x3f';  // 0.5
  GgufBuilder gpt2;
  TinyLlama(gpt2)
      .String("tokenizer.ggml.model", "gpt2")
      .String("tokenizer.ggml.pre", "smollm")
      .StringArray("tokenizer.ggml.tokens", tokens)
      .StringArray("tokenizer.ggml.merges", {"a b", "ab c"})
      .Raw("tokenizer.ggml.token_type", 9, Array(5, tokens.size(), types))
      .Uint32("tokenizer.ggml.bos_token_id", 260)
      .Uint32("tokenizer.ggml.eos_token_id", 259)
      .Bool("tokenizer.ggml.add_bos_token", 0)
      .String("tokenizer.chat_template", kChatMlTemplate)
      .Uint32("general.alignment", 32)
      .Tensor("token_embd.weight", {64, 1}, 0, f32)
      .Tensor("blk.0.attn_norm.weight", {32}, 1, f16)
      .Tensor("blk.0.attn_q.weight", {32}, 2, q4_0)
      .Tensor("blk.0.ffn_up.weight", {32}, 8, q8_0);
  out.Write("gguf", "byte_level_bpe.gguf", gpt2.Build());

  // SentencePiece BPE ranked by scores, with byte fallback tokens, GGUF version 2.
  std::vector<std::string> sp = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) sp.push_back(absl::StrFormat("<0x%02X>", b));
  const std::string space = "\xE2\x96\x81";  // SentencePiece's "▁"
  sp.insert(sp.end(), {space, "a", "b", space + "a", "ab", space + "ab"});
  std::string scores;
  for (size_t i = 0; i < sp.size(); ++i) {
    const float score = -static_cast<float>(i);
    uint32_t bits = 0;
    std::memcpy(&bits, &score, sizeof(bits));
    scores += U32(bits);
  }
  GgufBuilder llama;
  TinyLlama(llama)
      .String("tokenizer.ggml.model", "llama")
      .StringArray("tokenizer.ggml.tokens", sp)
      .Raw("tokenizer.ggml.scores", 9, Array(6, sp.size(), scores))
      .Uint32("tokenizer.ggml.unknown_token_id", 0)
      .Uint32("tokenizer.ggml.bos_token_id", 1)
      .Uint32("tokenizer.ggml.eos_token_id", 2)
      .Bool("tokenizer.ggml.add_space_prefix", 1)
      .String("tokenizer.chat_template", "[INST] {{ message['content'] }} [/INST]");
  out.Write("gguf", "sentencepiece_bpe_v2.gguf", llama.Build(/*version=*/2));

  // Every value type once, arrays of arrays included.
  GgufBuilder values;
  values.Raw("u8", 0, "\x07")
      .Raw("i8", 1, "\xF9")
      .Raw("u16", 2, std::string("\x01\x02", 2))
      .Raw("i16", 3, std::string("\xFE\xFF", 2))
      .Uint32("u32", 7)
      .Raw("i32", 5, U32(0xFFFFFFF0))
      .Float32("f32", 1.5F)
      .Bool("bool", 1)
      .String("string", "text")
      .Raw("u64", 10, U64(1))
      .Raw("i64", 11, U64(~uint64_t{0}))
      .Raw("f64", 12, U64(0x3FF8000000000000))
      .Raw("nested", 9, Array(9, 2, Array(4, 1, U32(1)) + Array(8, 1, Str("x"))))
      .Raw("general.alignment", 4, U32(64))
      .Tensor("bf16", {4, 2}, 30, std::string(16, '\x40'));
  out.Write("gguf", "every_value_type.gguf", values.Build(3, 64));
  out.Write("gguf", "empty.gguf", GgufBuilder().Build());
}

// The real model's metadata with its arrays cut to the first `kept` tokens (and the
// merges among them), and no tensors: a GGUF the config and tokenizer readers accept.
absl::Status RealModelSeeds(const std::string& path, SeedWriter& out) {
  absl::StatusOr<std::unique_ptr<model::GgufFile>> gguf = model::GgufFile::Open(path);
  if (!gguf.ok()) return gguf.status();
  constexpr size_t kKept = 400;
  absl::StatusOr<std::vector<std::string>> all_tokens =
      (*gguf)->GetStringArray("tokenizer.ggml.tokens");
  if (!all_tokens.ok()) return all_tokens.status();
  std::vector<std::string> tokens = *std::move(all_tokens);
  tokens.resize(std::min(kKept, tokens.size()));
  const std::set<std::string> known(tokens.begin(), tokens.end());
  std::vector<std::string> merges;
  if (auto all_merges = (*gguf)->GetStringArray("tokenizer.ggml.merges"); all_merges.ok()) {
    for (const std::string& merge : *all_merges) {
      const size_t space = merge.find(' ');
      if (space == std::string::npos) continue;
      const std::string left = merge.substr(0, space), right = merge.substr(space + 1);
      if (known.count(left) && known.count(right) && known.count(left + right)) {
        merges.push_back(merge);
      }
    }
  }
  GgufBuilder b;
  for (const auto& [key, value] : (*gguf)->metadata()) {
    using model::GgufValueType;
    switch (value.type) {
      case GgufValueType::kString:
        b.String(key, value.string);
        break;
      case GgufValueType::kBool:
        b.Bool(key, static_cast<uint8_t>(value.integer));
        break;
      case GgufValueType::kFloat32:
      case GgufValueType::kFloat64:
        b.Float32(key, static_cast<float>(value.real));
        break;
      case GgufValueType::kArray:
        break;  // below: only the tokenizer's, cut down
      default:  // integers
        b.Raw(key, 11, U64(static_cast<uint64_t>(value.integer)));
        break;
    }
  }
  b.StringArray("tokenizer.ggml.tokens", tokens).StringArray("tokenizer.ggml.merges", merges);
  if (auto types = (*gguf)->GetIntArray("tokenizer.ggml.token_type"); types.ok()) {
    std::string bytes;
    for (size_t i = 0; i < tokens.size(); ++i) bytes += U32(static_cast<uint32_t>((*types)[i]));
    b.Raw("tokenizer.ggml.token_type", 9, Array(5, tokens.size(), bytes));
  }
  const std::string cut = b.Build();
  out.Write("gguf", "real_model_metadata.gguf", cut);
  // The real file's first bytes: a header and the start of its metadata, truncated.
  out.Write("gguf", "real_model_prefix.gguf", std::string((*gguf)->bytes().substr(0, 2048)));

  // The same vocabulary as a tokenizer.json, with its config and generation config.
  nlohmann::json vocab = nlohmann::json::object();
  nlohmann::json added = nlohmann::json::array();
  for (size_t id = 0; id < tokens.size(); ++id) {
    vocab[tokens[id]] = id;
    if (tokens[id].size() > 2 && tokens[id].front() == '<' && tokens[id].back() == '>') {
      added.push_back({{"id", id}, {"content", tokens[id]}, {"special", true}});
    }
  }
  const nlohmann::json tokenizer = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Digits"}, {"individual_digits", true}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}}}}};
  const std::string config =
      R"({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": false})";
  out.Write("tokenizer_json", "real_model_vocabulary.json",
            Fields({tokenizer.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                    config, R"({"eos_token_id": [2, 0]})", "Hello world, 2025!"}));
  return absl::OkStatus();
}

// --- safetensors ----------------------------------------------------------------------

const char* const kSafetensorsHeaders[] = {
    R"({"__metadata__": {"format": "pt"},
        "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}})",
    R"({"a": {"dtype": "F16", "shape": [], "data_offsets": [0, 2]},
        "b": {"dtype": "I64", "shape": [1, 2], "data_offsets": [8, 24]},
        "c": {"dtype": "U8", "shape": [0], "data_offsets": [24, 24]},
        "d": {"dtype": "BOOL", "shape": [4], "data_offsets": [24, 28]},
        "e": {"dtype": "F64", "shape": [2], "data_offsets": [32, 48]},
        "f": {"dtype": "I32", "shape": [2, 1, 2], "data_offsets": [48, 64]}})",
    R"({})",
    R"({"__metadata__": {}})",
};

void SafetensorsSeeds(SeedWriter& out) {
  int n = 0;
  for (const char* header : kSafetensorsHeaders) {
    const std::string text(header);
    out.Write("safetensors_header", absl::StrCat("header_", n, ".json"), text);
    out.Write("safetensors", absl::StrCat("file_", n, ".safetensors"),
              U64(text.size()) + text + std::string(64, '\x07'));
    ++n;
  }
}

// --- tokenizer.json, config.json ------------------------------------------------------

void TokenizerJsonSeeds(SeedWriter& out) {
  const std::string small = R"({
  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
  "added_tokens": [{"id": 3, "content": "</s>", "special": true},
                   {"id": 4, "content": "<|eot|>", "special": true}],
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}
})";
  out.Write("tokenizer_json", "small.json",
            Fields({small, R"({"eos_token": "</s>", "bos_token": {"content": "</s>"}})",
                    R"({"eos_token_id": [3, 4]})", "abab</s>a<|eot|>"}));
  out.Write("tokenizer_json", "split_digits.json",
            Fields({R"({"model": {"type": "BPE", "ignore_merges": true,
  "vocab": {"1": 0, "2": 1, "12": 2, " ": 3, "x": 4}, "merges": [["1", "2"]]},
  "normalizer": null,
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false},
    {"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated"},
    {"type": "Digits", "individual_digits": false}]}})",
                    R"({"add_bos_token": true, "bos_token": "x"})", R"({"eos_token_id": 4})",
                    "12 x 1212"}));
  out.Write("tokenizer_json", "byte_vocabulary.json", [] {
    nlohmann::json vocab = nlohmann::json::object();
    const std::vector<std::string> bytes = ByteTokens();
    for (size_t id = 0; id < bytes.size(); ++id) vocab[bytes[id]] = id;
    vocab["\xC4\xA0t"] = 256;  // " t" spelled in the byte alphabet
    const nlohmann::json json = {
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"\xC4\xA0 t"}}}},
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"use_regex", false}}}};
    return Fields({json.dump(), "", "", " t\xFF\xE2\x82\xAC"});
  }());
}

void HfConfigSeeds(SeedWriter& out) {
  out.Write("hf_config", "llama.json", R"({"model_type": "llama", "vocab_size": 49152,
  "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
  "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
  "rms_norm_eps": 1e-05, "rope_theta": 100000, "tie_word_embeddings": true,
  "rope_scaling": null, "head_dim": null})");
  out.Write("hf_config", "llama3.json", R"({"model_type": "llama", "vocab_size": 128256,
  "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
  "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})");
  out.Write("hf_config", "qwen2.json", R"({"model_type": "qwen2", "vocab_size": 151936,
  "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
  "num_attention_heads": 14, "num_key_value_heads": 2, "attention_bias": true,
  "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "linear", "factor": 2}})");
}

void TokenizerEncodeSeeds(SeedWriter& out) {
  const char* const texts[] = {
      "Hello, world! How are you today?",
      "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
      "  leading spaces,\ttabs\r\nand\n\n\nnewlines   ",
      "caf\xC3\xA9 na\xC3\xAFve \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80 emoji",
      "I'm sure they'll say we've done it, didn't they?",
      "<|endoftext|><|endoftext|>text<|im_end",
      "invalid \xFF\xFE utf-8 \xC3",
  };
  int n = 0;
  for (const char* text : texts) {
    out.Write("tokenizer_encode", absl::StrCat("text_", n), text);
    out.Write("upload_text", absl::StrCat("text_", n), text);
    ++n;
  }
  // The edges of well-formed UTF-8 (Unicode's table 3-7): U+D7FF, U+E000, U+10FFFF.
  out.Write("upload_text", "edges", "\xED\x9F\xBF \xEE\x80\x80 \xF4\x8F\xBF\xBF \xEF\xBF\xBD");
}

// --- cache records ---------------------------------------------------------------------

// The value inside a frame: the bytes between the magic and the checksum.
std::string Unframed(const std::string& framed) { return framed.substr(4, framed.size() - 12); }

void KvBlobSeeds(SeedWriter& out) {
  const cache::KvKey key{
      .content_hash = "c0ffee", .model_fingerprint = "abc123", .prefix_hash = "f00d"};
  std::mt19937 random(7);
  std::normal_distribution<float> normal;
  for (const model::KvDtype dtype :
       {model::KvDtype::kFloat32, model::KvDtype::kBFloat16, model::KvDtype::kFloat16}) {
    model::KvSegment kv{.dtype = dtype,
                        .num_layers = 2,
                        .kv_heads = 2,
                        .head_dim = 4,
                        .start_position = 5,
                        .length = 3,
                        .layers = {}};
    for (int layer = 0; layer < kv.num_layers; ++layer) {
      std::string bytes(kv.LayerBytes(), '\0');
      const size_t element = model::KvDtypeSize(dtype);
      for (size_t i = 0; i < bytes.size(); i += element) {
        const float value = normal(random);
        uint32_t bits = 0;
        std::memcpy(&bits, &value, sizeof(bits));
        if (element == 2) bits >>= 16;  // a plausible half or bfloat16: the high bits
        std::memcpy(&bytes[i], &bits, element);
      }
      kv.layers.push_back(std::move(bytes));
    }
    for (const cache::KvQuantization q :
         {cache::KvQuantization::kNone, cache::KvQuantization::kInt8PerChannel,
          cache::KvQuantization::kInt8PerToken}) {
      if (!cache::CanQuantize(dtype, q)) continue;
      for (uint32_t layer = 0; layer < 2; ++layer) {
        absl::StatusOr<std::string> blob = cache::EncodeKvBlob(kv, layer, key, q);
        if (!blob.ok()) continue;
        out.Write(
            "kv_blob",
            absl::StrCat(model::KvDtypeName(dtype), "_", cache::KvQuantizationName(q), "_", layer),
            std::string(1, static_cast<char>(layer)) + Unframed(*blob));
      }
    }
  }
}

void FramedRecordSeeds(SeedWriter& out) {
  cache::StoredContext document{.namespace_id = "default", .id = "doc-1"};
  document.tokens = {1, 2, 3, 40000, 7};
  document.content_hash = cache::ContentHash(document.tokens, "");
  document.text = "The quick brown fox.";
  document.labels = {{"source", "wiki"}, {"lang", "en"}};
  document.created = absl::FromUnixSeconds(1700000000);
  out.Write("framed_record", "context", Unframed(cache::EncodeContextRecord(document)));
  document.pinned = true;
  document.expires = absl::FromUnixSeconds(1800000000);
  document.labels.clear();
  out.Write("framed_record", "context_pinned", Unframed(cache::EncodeContextRecord(document)));
  cache::KvEntryRecord entry;
  entry.set_num_layers(30);
  entry.set_stored_bytes(123456);
  entry.set_created_unix_micros(1700000000000000);
  out.Write("framed_record", "kv_entry", entry.SerializeAsString());
}

// --- requests --------------------------------------------------------------------------

void QueryPlanSeeds(SeedWriter& out) {
  ape::v1::GenerateRequest generate;
  generate.set_request_id("req-1");
  generate.set_query("What does the document say?");
  generate.add_context_ids("doc-1");
  ape::v1::InlineContext* inline_context = generate.add_inline_contexts();
  inline_context->set_text("Inline text.");
  inline_context->set_store(true);
  inline_context->set_context_id("inline-1");
  (*inline_context->mutable_labels())["k"] = "v";
  generate.set_mode(ape::v1::ENCODING_MODE_APE);
  generate.mutable_ape()->set_temperature(0.9F);
  generate.mutable_ape()->set_scale(0.8F);
  generate.mutable_ape()->set_form(ape::v1::APE_SCALE_FORM_ADDITIVE);
  ape::v1::SamplingParameters* sampling = generate.mutable_sampling();
  sampling->set_max_tokens(8);
  sampling->set_temperature(0.7F);
  sampling->set_top_k(40);
  sampling->set_top_p(0.95F);
  sampling->set_min_p(0.05F);
  sampling->set_repetition_penalty(1.1F);
  sampling->set_seed(42);
  sampling->add_stop("\n\n");
  sampling->set_ignore_eos(true);
  generate.set_top_logprobs(5);
  for (const char selector : {'\x00', '\x02'}) {
    out.Write("query_plan", absl::StrCat("generate_", static_cast<int>(selector)),
              std::string(1, selector) + generate.SerializeAsString());
  }
  ape::v1::GenerateRequest minimal;
  minimal.set_query("Hi");
  minimal.set_namespace_("team-a");
  minimal.set_mode(ape::v1::ENCODING_MODE_SEQUENTIAL);
  out.Write("query_plan", "generate_minimal", std::string(1, '\0') + minimal.SerializeAsString());

  ape::v1::ScoreRequest score;
  score.set_query("Which is right?");
  score.add_context_ids("doc-1");
  score.add_continuations(" yes");
  score.add_continuations(" no");
  score.set_mode(ape::v1::ENCODING_MODE_PARALLEL);
  for (const char selector : {'\x01', '\x03'}) {
    out.Write("query_plan", absl::StrCat("score_", static_cast<int>(selector)),
              std::string(1, selector) + score.SerializeAsString());
  }
}

}  // namespace
}  // namespace apeserve::fuzz

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s OUT_DIR [MODEL.gguf]\n", argv[0]);
    return 2;
  }
  apeserve::fuzz::SeedWriter out(argv[1]);
  apeserve::fuzz::GgufSeeds(out);
  apeserve::fuzz::SafetensorsSeeds(out);
  apeserve::fuzz::TokenizerJsonSeeds(out);
  apeserve::fuzz::HfConfigSeeds(out);
  apeserve::fuzz::TokenizerEncodeSeeds(out);
  apeserve::fuzz::KvBlobSeeds(out);
  apeserve::fuzz::FramedRecordSeeds(out);
  apeserve::fuzz::QueryPlanSeeds(out);
  if (argc == 3) {
    if (absl::Status real = apeserve::fuzz::RealModelSeeds(argv[2], out); !real.ok()) {
      // Not fatal: the synthetic seeds stand alone; say why the real ones are missing.
      std::fprintf(stderr, "fuzz_seeds: no seeds from %s: %s\n", argv[2], real.ToString().c_str());
    }
  }
  std::fprintf(stderr, "fuzz_seeds: %d seeds in %s\n", out.written(), argv[1]);
  return out.failed() ? 1 : 0;
}
