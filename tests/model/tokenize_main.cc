// tokenize: for the Python tokenizer oracle test. Reads JSON lines {"text": ...} on
// standard input; writes, per line, {"ids": [...], "decoded": ..., "streamed": [...]}
// where "streamed" are the pieces a StreamingDecoder returns token by token.
//
// Usage: tokenize MODEL.gguf < texts.jsonl
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "model/gguf_file.h"
#include "model/streaming_decoder.h"
#include "model/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: tokenize MODEL.gguf < texts.jsonl\n");
    return 2;
  }
  auto file = apeserve::model::GgufFile::Open(argv[1]);
  if (!file.ok()) {
    std::fprintf(stderr, "tokenize: %s\n", file.status().ToString().c_str());
    return 1;
  }
  auto tokenizer = apeserve::model::Tokenizer::FromGguf(**file);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "tokenize: %s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  for (std::string line; std::getline(std::cin, line);) {
    const nlohmann::json in = nlohmann::json::parse(line);
    const std::string text = in.at("text").get<std::string>();
    const std::vector<int32_t> ids = (*tokenizer)->Encode(text);
    apeserve::model::StreamingDecoder stream(**tokenizer);
    nlohmann::json pieces = nlohmann::json::array();
    for (int32_t id : ids) pieces.push_back(stream.Push(id));
    pieces.push_back(stream.Finish());
    const nlohmann::json out = {
        {"ids", ids}, {"decoded", (*tokenizer)->Decode(ids)}, {"streamed", pieces}};
    // Strict dump: a piece that is not valid UTF-8 throws, and so fails the test.
    std::puts(out.dump().c_str());
  }
  return 0;
}
