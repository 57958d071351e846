// Fuzzes the Hugging Face tokenizer reader: the input is tokenizer.json,
// tokenizer_config.json, generation_config.json and a text, separated by NUL bytes
// (Tokenizer::FromHfJson). A tokenizer that reads is then used on the text.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

namespace apeserve::model {
namespace {

void FuzzOne(absl::string_view bytes) {
  const std::vector<absl::string_view> fields = fuzz::SplitFields(bytes, 4);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromHfJson(fields[0], fields[1], fields[2]);
  if (!tokenizer.ok()) return;
  const Tokenizer& t = **tokenizer;
  fuzz::Check(t.bos_id() < t.vocab_size() && t.eos_id() < t.vocab_size(),
              "BOS or EOS outside the vocabulary");
  for (const bool parse_special : {true, false}) {
    const std::vector<int32_t> ids = t.Encode(fields[3], parse_special);
    for (int32_t id : ids) {
      fuzz::Check(id >= 0 && id < t.vocab_size(), "id outside the vocabulary");
    }
    (void)t.Decode(ids);  // only for what it touches: any bytes are a valid result
  }
}

}  // namespace
}  // namespace apeserve::model

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  apeserve::model::FuzzOne(apeserve::fuzz::AsView(data, size));
  return 0;
}
