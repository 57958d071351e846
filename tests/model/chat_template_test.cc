#include "model/chat_template.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/util/status_matchers.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::testing::HasSubstr;

TEST(ChatTemplateTest, RecognisesFamiliesFromTheirJinja) {
  const auto format_of = [](absl::string_view jinja) {
    auto t = ChatTemplate::FromJinja(jinja, "<s>", "</s>");
    return t.ok() ? static_cast<int>(t->format()) : -1;
  };
  EXPECT_EQ(format_of("{{'<|im_start|>' + message['role']}}"),
            static_cast<int>(ChatFormat::kChatMl));
  EXPECT_EQ(format_of("<|start_header_id|>{{ role }}<|end_header_id|>"),
            static_cast<int>(ChatFormat::kLlama3));
  EXPECT_EQ(format_of("[INST] <<SYS>>"), static_cast<int>(ChatFormat::kLlama2));
  EXPECT_EQ(format_of("{{ '[INST] ' + content + ' [/INST]' }}"),
            static_cast<int>(ChatFormat::kMistral));
  EXPECT_THAT(ChatTemplate::FromJinja("{{ content }}", "", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("none of ChatML")));
}

TEST(ChatTemplateTest, ReadsTheDefaultSystemPromptOfAChatMlTemplate) {
  const auto t = ChatTemplate::FromJinja(
      "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe "
      "nice.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n'}}",
      "", "");
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->Render({{"user", "Hi"}}, true),
            "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(t->Render({{"system", "Terse."}, {"user", "Hi"}}, false),
            "<|im_start|>system\nTerse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplateTest, RendersLlama3) {
  const ChatTemplate t = ChatTemplate::Of(ChatFormat::kLlama3, "<|begin_of_text|>", "<|eot_id|>");
  EXPECT_EQ(t.Render({{"system", "S"}, {"user", " Q "}, {"assistant", "A"}}, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, RendersLlama2AndMistral) {
  const ChatTemplate llama2 = ChatTemplate::Of(ChatFormat::kLlama2, "<s>", "</s>");
  EXPECT_EQ(
      llama2.Render({{"system", "S"}, {"user", "Q1"}, {"assistant", "A1"}, {"user", "Q2"}}, true),
      "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]");
  const ChatTemplate mistral = ChatTemplate::Of(ChatFormat::kMistral, "<s>", "</s>");
  EXPECT_EQ(mistral.Render({{"user", "Q1"}, {"assistant", "A1"}, {"user", "Q2"}}, true),
            "<s>[INST] Q1 [/INST]A1</s><s>[INST] Q2 [/INST]");
}

// The APE pieces, put together, are the rendering of one user turn holding the
// documents and the question: for every family, with and without a system prompt.
TEST(ChatTemplateTest, ApePiecesConcatenateToTheRenderedPrompt) {
  for (ChatFormat format :
       {ChatFormat::kChatMl, ChatFormat::kLlama3, ChatFormat::kLlama2, ChatFormat::kMistral}) {
    for (const std::string system : {"", "Answer from the documents."}) {
      const ChatTemplate t = ChatTemplate::Of(format, "<s>", "</s>");
      const std::string pieces = t.Prefix(system) + ChatTemplate::Context("Doc one.") +
                                 ChatTemplate::Context("Doc two.") + t.Query("Which doc?");
      std::vector<ChatMessage> messages;
      if (!system.empty()) messages.push_back({"system", system});
      messages.push_back({"user", "Doc one.\n\nDoc two.\n\nWhich doc?"});
      EXPECT_EQ(pieces, t.Render(messages, true))
          << "format " << static_cast<int>(format) << ", system '" << system << "'";
    }
  }
}

TEST(ChatTemplateTest, ADocumentAlwaysGivesTheSameContextBytes) {
  EXPECT_EQ(ChatTemplate::Context("The same text."), ChatTemplate::Context("The same text."));
  EXPECT_EQ(ChatTemplate::Context("x"), "x\n\n");
}

}  // namespace
}  // namespace apeserve::model
