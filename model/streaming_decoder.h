// Turns a stream of token ids into text piece by piece, as tokens are generated.
// A token can end in the middle of a multi-byte character (byte-level vocabularies
// split emoji and CJK across tokens); such bytes are held back until the character is
// complete, so every piece returned is valid UTF-8.
// Not thread-safe: one decoder per stream.
#ifndef APESERVE_MODEL_STREAMING_DECODER_H_
#define APESERVE_MODEL_STREAMING_DECODER_H_

#include <cstdint>
#include <string>

#include "model/tokenizer.h"

namespace apeserve::model {

class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  // The text that `id` completes (possibly empty).
  std::string Push(int32_t id);
  // The end of the stream: bytes still held back, as U+FFFD if they never formed a
  // character.
  std::string Finish();

 private:
  // Drops the leading space of the stream's first text, as Tokenizer::Decode does.
  std::string StripAtStart(std::string text);

  const Tokenizer& tokenizer_;
  std::string pending_;   // bytes of an unfinished character
  bool at_start_ = true;  // nothing emitted yet (SentencePiece strips one leading space)
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_STREAMING_DECODER_H_
