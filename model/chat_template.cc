#include "model/chat_template.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace apeserve::model {
namespace {

// The default system prompt a ChatML template inserts when the conversation has none:
// the literal text of a system turn in a template that tests for a missing system role.
std::string DefaultChatMlSystem(absl::string_view jinja) {
  if (!absl::StrContains(jinja, "!= 'system'") && !absl::StrContains(jinja, "!= \"system\"")) {
    return "";
  }
  constexpr absl::string_view kOpen = "<|im_start|>system\n";
  const size_t start = jinja.find(kOpen);
  if (start == absl::string_view::npos) return "";
  const size_t text = start + kOpen.size();
  const size_t end = jinja.find("<|im_end|>", text);
  if (end == absl::string_view::npos) return "";
  const absl::string_view literal = jinja.substr(text, end - text);
  // A turn built from variables ('+ message[...]') is no literal default.
  if (absl::StrContains(literal, "'") || absl::StrContains(literal, "{")) return "";
  return std::string(literal);
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromJinja(absl::string_view jinja, std::string bos,
                                                     std::string eos) {
  if (absl::StrContains(jinja, "<|im_start|>")) {
    return Of(ChatFormat::kChatMl, std::move(bos), std::move(eos), DefaultChatMlSystem(jinja));
  }
  if (absl::StrContains(jinja, "<|start_header_id|>")) {
    return Of(ChatFormat::kLlama3, std::move(bos), std::move(eos));
  }
  if (absl::StrContains(jinja, "<<SYS>>")) {
    return Of(ChatFormat::kLlama2, std::move(bos), std::move(eos));
  }
  if (absl::StrContains(jinja, "[INST]")) {
    return Of(ChatFormat::kMistral, std::move(bos), std::move(eos));
  }
  return absl::InvalidArgumentError(
      "the model's chat template is none of ChatML, Llama 3, Llama 2 or Mistral [INST]");
}

ChatTemplate ChatTemplate::Of(ChatFormat format, std::string bos, std::string eos,
                              std::string default_system) {
  return ChatTemplate(format, std::move(bos), std::move(eos), std::move(default_system));
}

std::string ChatTemplate::SystemTurn(absl::string_view system) const {
  if (system.empty()) system = default_system_;
  switch (format_) {
    case ChatFormat::kChatMl:
      return system.empty() ? "" : absl::StrCat("<|im_start|>system\n", system, "<|im_end|>\n");
    case ChatFormat::kLlama3:
      return system.empty() ? ""
                            : absl::StrCat("<|start_header_id|>system<|end_header_id|>\n\n",
                                           absl::StripAsciiWhitespace(system), "<|eot_id|>");
    case ChatFormat::kLlama2:
      return system.empty() ? "" : absl::StrCat("<<SYS>>\n", system, "\n<</SYS>>\n\n");
    case ChatFormat::kMistral:
      return system.empty() ? "" : absl::StrCat(system, "\n\n");
  }
  return "";
}

std::string ChatTemplate::UserOpen() const {
  switch (format_) {
    case ChatFormat::kChatMl:
      return "<|im_start|>user\n";
    case ChatFormat::kLlama3:
      return "<|start_header_id|>user<|end_header_id|>\n\n";
    case ChatFormat::kLlama2:
    case ChatFormat::kMistral:
      return absl::StrCat(bos_, "[INST] ");
  }
  return "";
}

std::string ChatTemplate::UserClose() const {
  switch (format_) {
    case ChatFormat::kChatMl:
      return "<|im_end|>\n";
    case ChatFormat::kLlama3:
      return "<|eot_id|>";
    case ChatFormat::kLlama2:
    case ChatFormat::kMistral:
      return " [/INST]";
  }
  return "";
}

std::string ChatTemplate::AssistantOpen() const {
  switch (format_) {
    case ChatFormat::kChatMl:
      return "<|im_start|>assistant\n";
    case ChatFormat::kLlama3:
      return "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case ChatFormat::kLlama2:
    case ChatFormat::kMistral:
      return "";
  }
  return "";
}

std::string ChatTemplate::AssistantTurn(absl::string_view content) const {
  switch (format_) {
    case ChatFormat::kChatMl:
      return absl::StrCat(AssistantOpen(), content, "<|im_end|>\n");
    case ChatFormat::kLlama3:
      return absl::StrCat(AssistantOpen(), absl::StripAsciiWhitespace(content), "<|eot_id|>");
    case ChatFormat::kLlama2:
      return absl::StrCat(" ", absl::StripAsciiWhitespace(content), " ", eos_);
    case ChatFormat::kMistral:
      return absl::StrCat(content, eos_);
  }
  return "";
}

std::string ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const {
  // Llama 3 opens with BOS; Llama 2 and Mistral open every user turn with it.
  std::string out = format_ == ChatFormat::kLlama3 ? bos_ : "";
  size_t first = 0;
  std::string system;
  if (!messages.empty() && messages[0].role == "system") {
    system = messages[0].content;
    first = 1;
  }
  // ChatML and Llama 3 give the system its own turn; Llama 2 and Mistral put it inside
  // the first user turn.
  const bool system_inside_user = format_ == ChatFormat::kLlama2 || format_ == ChatFormat::kMistral;
  if (!system_inside_user) out += SystemTurn(system);
  bool first_user = true;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "assistant") {
      out += AssistantTurn(m.content);
      continue;
    }
    absl::string_view content = m.content;
    if (format_ == ChatFormat::kLlama3) content = absl::StripAsciiWhitespace(content);
    out += UserOpen();
    if (system_inside_user && first_user) out += SystemTurn(system);
    absl::StrAppend(&out, content, UserClose());
    first_user = false;
  }
  if (add_generation_prompt) out += AssistantOpen();
  return out;
}

std::string ChatTemplate::Prefix(absl::string_view system) const {
  const bool system_inside_user = format_ == ChatFormat::kLlama2 || format_ == ChatFormat::kMistral;
  return absl::StrCat(format_ == ChatFormat::kLlama3 ? bos_ : "",
                      system_inside_user ? "" : SystemTurn(system), UserOpen(),
                      system_inside_user ? SystemTurn(system) : "");
}

std::string ChatTemplate::Context(absl::string_view document) {
  return absl::StrCat(document, "\n\n");
}

std::string ChatTemplate::Query(absl::string_view question) const {
  return absl::StrCat(question, UserClose(), AssistantOpen());
}

}  // namespace apeserve::model
