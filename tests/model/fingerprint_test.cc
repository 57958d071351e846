#include "model/fingerprint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "model/gguf_file.h"
#include "tests/model/gguf_builder.h"
#include "tests/util/status_matchers.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_paths.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::GgufBuilder;
using ::apeserve::testing::IsOk;

class FingerprintTest : public ::testing::Test {
 protected:
  // The fingerprint of a file with the given name metadata and weight bytes.
  std::string Of(const std::string& display_name, const std::string& weights,
                 const std::string& file_name = "model.gguf") {
    const std::string path = dir_.Join(file_name);
    EXPECT_TRUE(apeserve::testing::WriteFile(path, GgufBuilder()
                                                       .String("general.name", display_name)
                                                       .Tensor("b", {4}, 0, weights)
                                                       .Tensor("a", {4}, 0, std::string(16, '\x01'))
                                                       .Build()));
    auto file = GgufFile::Open(path);
    EXPECT_THAT(file, IsOk());
    return file.ok() ? FingerprintGguf(**file) : "";
  }

  apeserve::testing::TempDir dir_;
};

TEST_F(FingerprintTest, DependsOnWeightsOnly) {
  const std::string weights(16, '\x02');
  const std::string base = Of("first", weights);
  EXPECT_EQ(base.size(), 32U);
  EXPECT_EQ(Of("renamed in metadata", weights, "other-file.gguf"), base);
  std::string changed = weights;
  changed[7] ^= 1;
  EXPECT_NE(Of("first", changed), base);
}

TEST_F(FingerprintTest, FieldsCannotRunTogether) {
  FingerprintBuilder a, b;
  a.AddTensor("ab", "F32", "1", "c");
  b.AddTensor("a", "bF32", "1", "c");
  EXPECT_NE(a.Finish(), b.Finish());
}

TEST_F(FingerprintTest, EmbeddedModelHasAStableFingerprint) {
  auto file = GgufFile::Open(apeserve::testing::TestModelPath());
  ASSERT_THAT(file, IsOk());
  const std::string first = FingerprintGguf(**file);
  EXPECT_EQ(FingerprintGguf(**file), first);
  EXPECT_NE(first, std::string(32, '0'));
}

}  // namespace
}  // namespace apeserve::model
