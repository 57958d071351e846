// Fuzzes encoding of untrusted text (prompts, documents) with a real vocabulary: the
// default model's tokenizer (APESERVE_FUZZ_MODEL, else the model deploy/setup.sh
// places), or a small byte-level one when that file is absent. Encoding well-formed
// UTF-8, as the server receives it (protobuf refuses anything else in a string), must
// decode back to the same bytes, less those the vocabulary has no token for (dropped
// as the reference drops them).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "model/byte_level.h"
#include "model/gguf_file.h"
#include "model/regex_splitter.h"
#include "model/tokenizer.h"
#include "model/utf8.h"
#include "tests/fuzz/fuzz_support.h"

namespace apeserve::model {
namespace {

// Every byte on its own, the merges "a b" and "ab c", and two added tokens, spelled in
// the byte alphabet as a tokenizer.json spells them.
std::unique_ptr<Tokenizer> SmallTokenizer() {
  Tokenizer::Spec spec;
  for (int b = 0; b < 256; ++b) spec.tokens.push_back(ByteSpelling(static_cast<uint8_t>(b)));
  spec.tokens.insert(spec.tokens.end(), {"ab", "abc", "<|end|>", "<tool>"});
  spec.merges = {{"a", "b"}, {"ab", "c"}};
  spec.added = {{"<|end|>", 258, true}, {"<tool>", 259, false}};
  spec.split_patterns = {std::string(PreTokenizerPattern("gpt2"))};
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromSpec(std::move(spec));
  fuzz::Check(t.ok(), "the small tokenizer does not build");
  return *std::move(t);
}

std::unique_ptr<Tokenizer> LoadTokenizer() {
  const char* env = std::getenv("APESERVE_FUZZ_MODEL");
  const std::string path = env != nullptr ? env : APESERVE_DEFAULT_MODEL;
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(path);
  if (gguf.ok()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromGguf(**gguf);
    if (t.ok()) {
      std::fprintf(stderr, "tokenizer_encode_fuzzer: the vocabulary of %s (%d tokens)\n",
                   path.c_str(), (*t)->vocab_size());
      return *std::move(t);
    }
    std::fprintf(stderr, "tokenizer_encode_fuzzer: %s\n", t.status().ToString().c_str());
  } else {
    std::fprintf(stderr, "tokenizer_encode_fuzzer: %s\n", gguf.status().ToString().c_str());
  }
  std::fprintf(stderr, "tokenizer_encode_fuzzer: a small vocabulary instead\n");
  return SmallTokenizer();
}

// The tokenizer, and which bytes its vocabulary has no token for (dropped from any
// input, as the reference drops them).
struct Subject {
  std::unique_ptr<Tokenizer> tokenizer;
  bool dropped[256] = {};
};

const Subject& TheSubject() {
  static const Subject* const subject = [] {
    auto* s = new Subject{.tokenizer = LoadTokenizer()};
    int count = 0;
    for (int b = 0; b < 256; ++b) {
      const std::string byte(1, static_cast<char>(b));
      s->dropped[b] = s->tokenizer->Encode(byte, /*parse_special=*/false).empty();
      count += s->dropped[b] ? 1 : 0;
    }
    std::fprintf(stderr, "tokenizer_encode_fuzzer: %d bytes have no token\n", count);
    return s;
  }();
  return *subject;
}

void FuzzOne(absl::string_view text) {
  const Subject& subject = TheSubject();
  const Tokenizer& tokenizer = *subject.tokenizer;
  const bool well_formed = SanitizeUtf8(text) == text;  // nothing to replace
  std::string kept;                                     // `text` less the bytes without a token
  for (const char c : text) {
    if (!subject.dropped[static_cast<uint8_t>(c)]) kept.push_back(c);
  }
  for (const bool parse_special : {true, false}) {
    const std::vector<int32_t> ids = tokenizer.Encode(text, parse_special);
    for (int32_t id : ids) {
      fuzz::Check(id >= 0 && id < tokenizer.vocab_size(), "id outside the vocabulary");
    }
    fuzz::Check(ids.size() <= text.size(), "more tokens than bytes");
    const std::string decoded = tokenizer.Decode(ids);
    if (well_formed) {
      fuzz::Check(decoded == kept, "well-formed UTF-8 does not decode back to itself");
    }
  }
}

}  // namespace
}  // namespace apeserve::model

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  apeserve::model::FuzzOne(apeserve::fuzz::AsView(data, size));
  return 0;
}
