// Text to token ids and back, exactly as the model's reference tokenizer does it.
//
// Byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen2) read from GGUF metadata or a
// Hugging Face tokenizer.json: special and added tokens written in the text are matched
// first (longest first), the rest is cut into pre-tokens by the vocabulary's regular
// expressions, spelled in the byte alphabet, and merged by rank.
// SentencePiece-style BPE (Llama 2, Mistral v0.1) read from GGUF metadata: spaces
// become "▁", a "▁" starts the input, pieces start as UTF-8 characters, characters
// outside the vocabulary fall back to <0xXX> byte tokens, and merges are ranked by
// the vocabulary's scores.
// Thread-safety: immutable after construction.
#ifndef APESERVE_MODEL_TOKENIZER_H_
#define APESERVE_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace apeserve::model {

class GgufFile;
class RegexSplitter;

class Tokenizer {
 public:
  // INVALID_ARGUMENT: a tokenizer model other than "gpt2" (byte-level BPE) and "llama"
  // (SentencePiece BPE), or a vocabulary whose tokens, types or merges are inconsistent.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& file);

  // From a Hugging Face tokenizer.json and, optionally ("" when absent),
  // tokenizer_config.json (BOS, EOS, add_bos_token) and generation_config.json (the
  // ids that end generation, which may be several). INVALID_ARGUMENT names what we do
  // not read: a model other than byte-level BPE, a normalizer, a pre-tokenizer other
  // than ByteLevel, Split, Digits and Sequence of those.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromHfJson(
      absl::string_view tokenizer_json, absl::string_view config_json,
      absl::string_view generation_config_json = "");

  // What both readers produce: the vocabulary in byte-alphabet spelling.
  struct Spec {
    std::vector<std::string> tokens;                          // by id; "" for unused ids
    std::vector<std::pair<std::string, std::string>> merges;  // by rank
    struct Added {
      std::string content;  // as written in text
      int32_t id;
      bool special;
    };
    std::vector<Added> added;
    std::vector<std::string> split_patterns;  // applied one after the other
    bool ignore_merges = false;    // a pre-token found whole in the vocabulary is one token
    bool sentencepiece = false;    // tokens are spelled with "▁", not the byte alphabet
    bool add_prefix_space = true;  // SentencePiece: "▁" before text that starts the input
    int32_t unk_id = -1;           // SentencePiece: for bytes without a token
    int32_t bos_id = -1;
    int32_t eos_id = -1;
    std::vector<int32_t> extra_eos_ids;  // further ids that end generation
    bool add_bos = false;
  };
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromSpec(Spec spec);

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  // The ids of `text`. With `parse_special`, special tokens spelled in the text (such
  // as "<|im_start|>") become their ids; without, they are tokenized as plain text.
  // Never adds BOS; see add_bos().
  std::vector<int32_t> Encode(absl::string_view text, bool parse_special = true) const;

  // The bytes of `ids` concatenated (special tokens as their text). Ids outside the
  // vocabulary decode to nothing.
  std::string Decode(absl::Span<const int32_t> ids) const;
  // The bytes of one token.
  absl::string_view TokenBytes(int32_t id) const;

  int32_t vocab_size() const { return static_cast<int32_t>(token_bytes_.size()); }
  int32_t bos_id() const { return bos_id_; }  // -1 when the model has none
  int32_t eos_id() const { return eos_id_; }  // -1 when the model has none
  bool add_bos() const { return add_bos_; }   // whether prompts start with BOS
  bool IsSpecial(int32_t id) const;
  // Whether `id` ends generation: the EOS token or another the model names (Llama 3's
  // <|eot_id|>, say).
  bool IsEndOfSequence(int32_t id) const;
  // Whether decoding drops one leading space (SentencePiece's prefix space).
  bool strips_leading_space() const { return sentencepiece_ && add_prefix_space_; }

  // 32 hex digits naming everything that decides which ids a text gets and which text
  // an id stands for: the vocabulary, added tokens, merges, pre-tokenizer and unknown
  // id (not BOS, EOS or the ids that end generation). Token ids stored under one
  // tokenizer mean the same under another only if these agree.
  const std::string& fingerprint() const { return fingerprint_; }

 private:
  Tokenizer();
  void EncodePiece(absl::string_view piece, std::vector<int32_t>& out) const;
  // The starting symbols of a pre-token: its bytes (byte-level) or its characters with
  // byte fallback (SentencePiece).
  std::vector<int32_t> InitialSymbols(absl::string_view piece) const;

  std::vector<std::string> token_bytes_;                     // raw bytes of each token
  absl::flat_hash_map<std::string, int32_t> spelled_to_id_;  // vocabulary, byte-alphabet spelling
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>>
      merges_;                                          // (left, right) -> (rank, id)
  std::vector<std::pair<std::string, int32_t>> added_;  // matched whole in text, longest first
  std::vector<bool> special_;
  std::vector<std::unique_ptr<RegexSplitter>> splitters_;
  bool ignore_merges_ = false;
  bool sentencepiece_ = false;
  bool add_prefix_space_ = true;
  int32_t unk_id_ = -1;
  int32_t byte_token_[256] = {};  // the token of each single byte; -1 if none
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  std::vector<int32_t> extra_eos_ids_;
  bool add_bos_ = false;
  std::string fingerprint_;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_TOKENIZER_H_
