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

}  // namespace
}  // namespace apeserve
