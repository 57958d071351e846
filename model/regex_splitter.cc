#include "model/regex_splitter.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>

#include "absl/strings/str_cat.h"

namespace apeserve::model {
namespace {

// GPT-2: contractions, letters, numbers and other symbols each with an optional
// leading space, then runs of whitespace (leaving the last space to the next word).
constexpr absl::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama 3: case-insensitive contractions, numbers in groups of up to three, newlines
// kept apart.
constexpr absl::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2: as Llama 3, but every digit on its own.
constexpr absl::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace

absl::string_view PreTokenizerPattern(absl::string_view gguf_pre) {
  for (absl::string_view name : {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx"}) {
    if (gguf_pre == name) return kLlama3Pattern;
  }
  for (absl::string_view name : {"qwen2", "deepseek-r1-qwen"}) {
    if (gguf_pre == name) return kQwen2Pattern;
  }
  return kGpt2Pattern;
}

struct RegexSplitter::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

RegexSplitter::RegexSplitter(std::unique_ptr<Code> code) : code_(std::move(code)) {}
RegexSplitter::~RegexSplitter() = default;

absl::StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Create(absl::string_view pattern) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  auto code = std::make_unique<Code>();
  code->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                             PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &error_offset,
                             nullptr);
  if (code->code == nullptr) {
    std::array<PCRE2_UCHAR, 256> message{};
    pcre2_get_error_message(error, message.data(), message.size());
    return absl::InvalidArgumentError(
        absl::StrCat("pre-tokenizer pattern does not compile at offset ", error_offset, ": ",
                     reinterpret_cast<const char*>(message.data())));
  }
  // JIT makes matching several times faster; without it (unsupported CPU) it still works.
  (void)pcre2_jit_compile(code->code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<RegexSplitter>(new RegexSplitter(std::move(code)));
}

std::vector<absl::string_view> RegexSplitter::Split(absl::string_view text) const {
  std::vector<absl::string_view> pieces;
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(code_->code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start < text.size()) {
    const int rc = pcre2_match(code_->code, subject, text.size(), start, 0, match, nullptr);
    if (rc < 0) break;  // no further match: the rest is one piece
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
    const size_t begin = ovector[0], end = ovector[1];
    if (begin > start) pieces.push_back(text.substr(start, begin - start));
    if (end == begin) {
      // An empty match: step over one byte so the loop advances.
      pieces.push_back(text.substr(begin, 1));
      start = begin + 1;
      continue;
    }
    pieces.push_back(text.substr(begin, end - begin));
    start = end;
  }
  if (start < text.size()) pieces.push_back(text.substr(start));
  pcre2_match_data_free(match);
  return pieces;
}

}  // namespace apeserve::model
