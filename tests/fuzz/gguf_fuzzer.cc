// Fuzzes the GGUF reader with the input as a whole model file: the header, the
// metadata, the tensor table and the tensor views (GgufFile::Open), then what the
// engine reads from a GGUF before it touches a tensor: the model config, the tokenizer
// (byte-level and SentencePiece) and the chat template.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/chat_template.h"
#include "model/ggml_type.h"
#include "model/gguf_file.h"
#include "model/gguf_header.h"
#include "model/model_config.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

namespace apeserve::model {
namespace {

constexpr int64_t kMaxDequantized = int64_t{1} << 16;

void CheckTensors(const GgufFile& file) {
  const absl::string_view bytes = file.bytes();
  for (const GgufTensor& tensor : file.tensors()) {
    // Every tensor's view lies inside the file and holds its whole shape.
    fuzz::Check(tensor.type != nullptr, "tensor without a type");
    fuzz::Check(tensor.bytes.data() >= bytes.data() &&
                    tensor.bytes.data() + tensor.bytes.size() <= bytes.data() + bytes.size(),
                "tensor bytes outside the file");
    fuzz::Check(file.FindTensor(tensor.name) == &tensor, "tensor index disagrees");
    // Dequantization of what the file holds (the weight loader's first step); small
    // tensors only, to keep each run short.
    if (tensor.element_count <= kMaxDequantized) {
      std::vector<float> values(static_cast<size_t>(tensor.element_count));
      fuzz::Check(
          Dequantize(tensor.type->type, tensor.bytes, tensor.element_count, values.data()).ok(),
          "an accepted tensor does not dequantize");
    }
  }
}

void ReadTokenizer(const GgufFile& file) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromGguf(file);
  if (!tokenizer.ok()) return;
  const Tokenizer& t = **tokenizer;
  const std::vector<int32_t> ids = t.Encode("Hello, world! 123 <|im_start|>user\n\xE2\x96\x81x");
  for (int32_t id : ids) fuzz::Check(id >= 0 && id < t.vocab_size(), "id outside the vocabulary");
  (void)t.Decode(ids);  // only for what it touches: any bytes are a valid result
  if (const GgufValue* jinja = file.Find("tokenizer.chat_template");
      jinja != nullptr && jinja->type == GgufValueType::kString) {
    absl::StatusOr<ChatTemplate> chat =
        ChatTemplate::FromJinja(jinja->string, std::string(t.TokenBytes(t.bos_id())),
                                std::string(t.TokenBytes(t.eos_id())));
    if (chat.ok()) (void)chat->Prefix("");  // the default system prompt it read
  }
}

void FuzzOne(absl::string_view bytes) {
  static fuzz::MemoryFile* const file = new fuzz::MemoryFile();
  (void)ParseGgufHeader(bytes, bytes.size(), "fuzz");  // the header alone: its status is all
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(file->Write(bytes));
  if (!gguf.ok()) return;
  CheckTensors(**gguf);
  (void)ConfigFromGguf(**gguf);  // OK or an error: both are fine, a crash is not
  ReadTokenizer(**gguf);
}

}  // namespace
}  // namespace apeserve::model

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  apeserve::model::FuzzOne(apeserve::fuzz::AsView(data, size));
  return 0;
}
