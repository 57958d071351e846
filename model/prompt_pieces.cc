#include "model/prompt_pieces.h"

namespace apeserve::model {

std::vector<int32_t> PromptPieces::Prefix(absl::string_view system) const {
  const std::vector<int32_t> text = tokenizer_.Encode(chat_.Prefix(system));
  const int32_t bos = tokenizer_.bos_id();
  std::vector<int32_t> tokens;
  tokens.reserve(text.size() + 1);
  if (tokenizer_.add_bos() && bos >= 0 && (text.empty() || text.front() != bos)) {
    tokens.push_back(bos);
  }
  tokens.insert(tokens.end(), text.begin(), text.end());
  return tokens;
}

std::vector<int32_t> PromptPieces::Context(absl::string_view document) const {
  // An uploaded document is data: "<|im_end|>" in it must not end the user's turn.
  return tokenizer_.Encode(ChatTemplate::Context(document), /*parse_special=*/false);
}

std::vector<int32_t> PromptPieces::Query(absl::string_view question) const {
  return tokenizer_.Encode(chat_.Query(question));
}

}  // namespace apeserve::model
