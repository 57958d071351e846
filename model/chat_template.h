// Chat prompt formats of the model families we run (ChatML, Llama 3, Llama 2 and
// Mistral's [INST]), chosen from the Jinja template in the model's metadata, and the
// three pieces of a prompt that APE encodes separately.
//
// An APE prompt is one user turn holding the documents and then the question:
//   Prefix(system) + Context(doc_1) + ... + Context(doc_N) + Query(question)
// equals Render({system, user: doc_1 "\n\n" ... doc_N "\n\n" question}) with the
// generation prompt, byte for byte; a document always yields the same Context bytes,
// so its cached KV is reusable in any query. Thread-safety: immutable.
#ifndef APESERVE_MODEL_CHAT_TEMPLATE_H_
#define APESERVE_MODEL_CHAT_TEMPLATE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

enum class ChatFormat { kChatMl, kLlama3, kLlama2, kMistral };

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  // Recognises the family of `jinja` (the model's tokenizer.chat_template) and reads
  // the default system prompt it inserts, if any. `bos` and `eos` are the texts of the
  // model's BOS and EOS tokens. INVALID_ARGUMENT: a template of no family we know.
  static absl::StatusOr<ChatTemplate> FromJinja(absl::string_view jinja, std::string bos,
                                                std::string eos);
  static ChatTemplate Of(ChatFormat format, std::string bos, std::string eos,
                         std::string default_system = "");

  ChatFormat format() const { return format_; }

  // The conversation as the model's template renders it.
  std::string Render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  // The shared prefix: BOS, the system turn (`system`, or the template's default when
  // empty) and the opening of the user turn.
  std::string Prefix(absl::string_view system) const;
  // One document inside the user turn.
  static std::string Context(absl::string_view document);
  // The question, the end of the user turn and the opening of the assistant's.
  std::string Query(absl::string_view question) const;

 private:
  ChatTemplate(ChatFormat format, std::string bos, std::string eos, std::string default_system)
      : format_(format),
        bos_(std::move(bos)),
        eos_(std::move(eos)),
        default_system_(std::move(default_system)) {}

  std::string SystemTurn(absl::string_view system) const;
  std::string UserOpen() const;
  std::string UserClose() const;
  std::string AssistantOpen() const;
  std::string AssistantTurn(absl::string_view content) const;

  ChatFormat format_;
  std::string bos_;
  std::string eos_;
  std::string default_system_;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_CHAT_TEMPLATE_H_
