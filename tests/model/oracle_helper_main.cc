// oracle_helper: our tokenizer and chat template, driven by the Python oracle tests.
// Reads JSON lines on standard input and writes one JSON line per input line:
//
//   oracle_helper tokenize MODEL.gguf   {"text": ...} -> {"ids": [...], "decoded": ...,
//                                        "streamed": [pieces of a StreamingDecoder]}
//   oracle_helper chat MODEL.gguf       {"messages": [{"role", "content"}...],
//                                        "add_generation_prompt": bool} -> {"text": ...}
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "model/chat_template.h"
#include "model/gguf_file.h"
#include "model/streaming_decoder.h"
#include "model/tokenizer.h"

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "oracle_helper: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: oracle_helper (tokenize|chat) MODEL.gguf < lines.jsonl\n");
    return 2;
  }
  const std::string mode = argv[1];
  auto file = apeserve::model::GgufFile::Open(argv[2]);
  if (!file.ok()) return Fail(file.status().ToString());
  auto tokenizer = apeserve::model::Tokenizer::FromGguf(**file);
  if (!tokenizer.ok()) return Fail(tokenizer.status().ToString());
  const apeserve::model::Tokenizer& t = **tokenizer;

  std::unique_ptr<apeserve::model::ChatTemplate> chat;
  if (mode == "chat") {
    const auto jinja = (*file)->GetString("tokenizer.chat_template");
    if (!jinja.ok()) return Fail(jinja.status().ToString());
    auto parsed = apeserve::model::ChatTemplate::FromJinja(
        *jinja, std::string(t.TokenBytes(t.bos_id())), std::string(t.TokenBytes(t.eos_id())));
    if (!parsed.ok()) return Fail(parsed.status().ToString());
    chat = std::make_unique<apeserve::model::ChatTemplate>(*std::move(parsed));
  } else if (mode != "tokenize") {
    return Fail("unknown mode " + mode);
  }

  for (std::string line; std::getline(std::cin, line);) {
    const nlohmann::json in = nlohmann::json::parse(line);
    nlohmann::json out;
    if (chat != nullptr) {
      std::vector<apeserve::model::ChatMessage> messages;
      for (const auto& m : in.at("messages")) {
        messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
      }
      out["text"] = chat->Render(messages, in.at("add_generation_prompt").get<bool>());
    } else {
      const std::vector<int32_t> ids = t.Encode(in.at("text").get<std::string>());
      apeserve::model::StreamingDecoder stream(t);
      nlohmann::json pieces = nlohmann::json::array();
      for (int32_t id : ids) pieces.push_back(stream.Push(id));
      pieces.push_back(stream.Finish());
      out = {{"ids", ids}, {"decoded", t.Decode(ids)}, {"streamed", pieces}};
    }
    // Strict dump: a piece that is not valid UTF-8 throws, and so fails the test.
    std::puts(out.dump().c_str());
  }
  return 0;
}
