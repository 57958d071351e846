#include "model/streaming_decoder.h"

#include "model/utf8.h"

namespace apeserve::model {

std::string StreamingDecoder::Push(int32_t id) {
  const absl::string_view bytes = tokenizer_.TokenBytes(id);
  pending_.append(bytes.data(), bytes.size());
  const size_t complete = CompleteUtf8Prefix(pending_);
  std::string text = SanitizeUtf8(absl::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return StripAtStart(std::move(text));
}

std::string StreamingDecoder::Finish() {
  std::string text = SanitizeUtf8(pending_);
  pending_.clear();
  return StripAtStart(std::move(text));
}

std::string StreamingDecoder::StripAtStart(std::string text) {
  if (!at_start_ || text.empty()) return text;
  at_start_ = false;
  if (tokenizer_.strips_leading_space() && text[0] == ' ') text.erase(0, 1);
  return text;
}

}  // namespace apeserve::model
