// Splits text into pre-tokens with a Unicode-aware regular expression (PCRE2): every
// match is a piece, and so is any text between matches, so nothing is dropped.
// Thread-safety: Split() is const and safe from many threads.
#ifndef APESERVE_MODEL_REGEX_SPLITTER_H_
#define APESERVE_MODEL_REGEX_SPLITTER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

// The pre-tokenizer patterns of the vocabularies we read, keyed by GGUF's
// "tokenizer.ggml.pre". Others use GPT-2's pattern, as the reference converter does.
absl::string_view PreTokenizerPattern(absl::string_view gguf_pre);

class RegexSplitter {
 public:
  // INVALID_ARGUMENT: the pattern does not compile (the message says where).
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Create(absl::string_view pattern);

  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;
  ~RegexSplitter();

  // Pieces of `text` in order; their concatenation is `text`. Invalid UTF-8 never
  // matches and ends up in the pieces between matches.
  std::vector<absl::string_view> Split(absl::string_view text) const;

 private:
  struct Code;
  explicit RegexSplitter(std::unique_ptr<Code> code);
  std::unique_ptr<Code> code_;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_REGEX_SPLITTER_H_
