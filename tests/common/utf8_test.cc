#include "common/utf8.h"

#include <gtest/gtest.h>

#include <string>

namespace apeserve {
namespace {

TEST(Utf8Test, AcceptsWellFormedTextAndRefusesBrokenSequences) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ASCII"));
  EXPECT_TRUE(IsValidUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x90\x90"));  // é € 🐐
  EXPECT_FALSE(IsValidUtf8("\xC3"));                  // truncated two-byte character
  EXPECT_FALSE(IsValidUtf8("\xF0\x9F\x90"));          // truncated four-byte character
  EXPECT_FALSE(IsValidUtf8("\x80 starts mid-way"));   // a continuation byte first
  EXPECT_FALSE(IsValidUtf8("\xE2\x28\xA1"));          // a bad continuation byte
  EXPECT_FALSE(IsValidUtf8(std::string("\xFF", 1)));  // never a lead byte
}

// Found by tests/fuzz/upload_text_fuzzer.cc: UploadContext accepted text that protobuf
// refuses in a string, so GetContext could not send such a context's text back.
TEST(Utf8Test, RefusesWhatProtobufRefuses) {
  EXPECT_FALSE(IsValidUtf8("\xED\xA9\xB7"));              // a surrogate, U+DA77
  EXPECT_FALSE(IsValidUtf8(std::string("\xC0\x80", 2)));  // NUL, overlong
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));              // '/', overlong
  EXPECT_FALSE(IsValidUtf8("\xF0\x8F\xBF\xBF"));          // U+FFFF, overlong
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));          // U+110000, past the last code point
  EXPECT_FALSE(IsValidUtf8("\xF5\x80\x80\x80"));          // a lead byte past F4
  // The edges that are well-formed: U+D7FF, U+E000, U+10000, U+10FFFF.
  EXPECT_TRUE(IsValidUtf8("\xED\x9F\xBF \xEE\x80\x80 \xF0\x90\x80\x80 \xF4\x8F\xBF\xBF"));
}

}  // namespace
}  // namespace apeserve
