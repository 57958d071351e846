// oracle_helper: our tokenizer and chat template, driven by the Python oracle tests.
// Reads JSON lines on standard input and writes one JSON line per input line. MODEL is
// a GGUF file or a Hugging Face folder (its tokenizer.json).
//
//   oracle_helper tokenize MODEL        {"text": ...} -> {"ids": [...], "decoded": ...,
//                                        "streamed": [pieces of a StreamingDecoder]}
//   oracle_helper chat MODEL.gguf       {"messages": [{"role", "content"}...],
//                                        "add_generation_prompt": bool} -> {"text": ...}
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
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
  const std::string path = argv[2];
  // A folder is a Hugging Face model: its tokenizer.json; a file is GGUF.
  std::unique_ptr<apeserve::model::GgufFile> file;
  absl::StatusOr<std::unique_ptr<apeserve::model::Tokenizer>> tokenizer;
  if (std::filesystem::is_directory(path)) {
    std::ifstream json(path + "/tokenizer.json"), config(path + "/tokenizer_config.json");
    std::stringstream json_text, config_text;
    json_text << json.rdbuf();
    config_text << config.rdbuf();
    tokenizer = apeserve::model::Tokenizer::FromHfJson(json_text.str(), config_text.str());
  } else {
    auto opened = apeserve::model::GgufFile::Open(path);
    if (!opened.ok()) return Fail(opened.status().ToString());
    file = *std::move(opened);
    tokenizer = apeserve::model::Tokenizer::FromGguf(*file);
  }
  if (!tokenizer.ok()) return Fail(tokenizer.status().ToString());
  const apeserve::model::Tokenizer& t = **tokenizer;

  std::unique_ptr<apeserve::model::ChatTemplate> chat;
  if (mode == "chat") {
    if (file == nullptr) return Fail("chat mode reads a GGUF file");
    const auto jinja = file->GetString("tokenizer.chat_template");
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
