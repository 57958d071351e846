// Fuzzes the UTF-8 check of UploadContext (IsValidUtf8), whose text arrives as bytes
// chunks and then becomes a proto3 string: it must accept exactly what protobuf accepts
// in a string, or a stored context's text could not be sent back (GetContext with
// include_text) to a client that parses the reply.
#include <cstddef>
#include <cstdint>
#include <string>

#include "ape/v1/context.pb.h"
#include "common/utf8.h"
#include "google/protobuf/stubs/logging.h"
#include "tests/fuzz/fuzz_support.h"

namespace apeserve {
namespace {

// Whether protobuf parses a Context whose text field holds `text`, as a client does.
bool ProtobufAcceptsString(absl::string_view text) {
  std::string wire;
  wire.push_back(static_cast<char>((7 << 3) | 2));  // field 7 (text), length-delimited
  for (uint64_t length = text.size();; length >>= 7) {
    wire.push_back(static_cast<char>((length & 0x7F) | (length >= 0x80 ? 0x80 : 0)));
    if (length < 0x80) break;
  }
  wire.append(text.data(), text.size());
  ape::v1::Context context;
  return context.ParseFromString(wire);
}

void FuzzOne(absl::string_view text) {
  // Protobuf logs every string it refuses; the verdict is all this needs.
  static const bool quiet = [] {
    google::protobuf::SetLogHandler(
        [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
    return true;
  }();
  (void)quiet;
  fuzz::Check(IsValidUtf8(text) == ProtobufAcceptsString(text),
              "IsValidUtf8 and protobuf disagree on a string");
}

}  // namespace
}  // namespace apeserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  apeserve::FuzzOne(apeserve::fuzz::AsView(data, size));
  return 0;
}
