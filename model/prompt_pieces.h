// The token pieces of an APE prompt, cut where the chat template says (see
// chat_template.h): the shared prefix (BOS, system turn, opening of the user turn), one
// piece per document, and the query (question, end of the user turn, opening of the
// assistant's). Each piece is tokenized on its own, so a document always yields the
// same tokens, and so the same cached KV, in every query and at every place in it.
// Thread-safety: immutable; borrows the tokenizer and template, which must outlive it.
#ifndef APESERVE_MODEL_PROMPT_PIECES_H_
#define APESERVE_MODEL_PROMPT_PIECES_H_

#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"

namespace apeserve::model {

class PromptPieces {
 public:
  PromptPieces(const Tokenizer& tokenizer, const ChatTemplate& chat)
      : tokenizer_(tokenizer), chat_(chat) {}

  // BOS when the model wants one, then ChatTemplate::Prefix(system); an empty `system`
  // takes the template's default system prompt.
  std::vector<int32_t> Prefix(absl::string_view system) const;
  // ChatTemplate::Context(document): the document and a blank line. Special-token
  // texts inside a document are kept as plain text, never parsed as control tokens.
  std::vector<int32_t> Context(absl::string_view document) const;
  // ChatTemplate::Query(question).
  std::vector<int32_t> Query(absl::string_view question) const;

 private:
  const Tokenizer& tokenizer_;
  const ChatTemplate& chat_;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_PROMPT_PIECES_H_
