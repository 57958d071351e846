// APE's options and the calibration files that carry them: names of modes and forms,
// validation, and parsing of untrusted JSON.
#include "model/ape_options.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/util/status_matchers.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::testing::HasSubstr;

TEST(ApeOptionsTest, DefaultsAreThePublishedFormAtTheAuthorsValues) {
  const ApeOptions options;
  EXPECT_EQ(options.mode, EncodingMode::kApe);
  EXPECT_EQ(options.form, ApeScaleForm::kMultiplicative);
  EXPECT_FLOAT_EQ(options.temperature, 0.9F);
  EXPECT_FLOAT_EQ(options.scale, 0.9F);
  EXPECT_THAT(options.Validate(), IsOk());
}

TEST(ApeOptionsTest, NamesRoundTrip) {
  for (const ApeScaleForm form : {ApeScaleForm::kMultiplicative, ApeScaleForm::kAdditive}) {
    const auto parsed = ParseApeScaleForm(ApeScaleFormName(form));
    ASSERT_THAT(parsed, IsOk());
    EXPECT_EQ(*parsed, form);
  }
  EXPECT_EQ(ApeScaleFormName(ApeScaleForm::kMultiplicative), "multiplicative");
  EXPECT_EQ(ApeScaleFormName(ApeScaleForm::kAdditive), "additive");
  EXPECT_THAT(ParseApeScaleForm("Additive"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'Additive'")));
}

TEST(ApeOptionsTest, ReadsACalibration) {
  const auto full = ParseApeCalibration(
      R"({"model_fingerprint": "ab12", "temperature": 0.55, "scale": 1.2, "form": "additive",
          "points": [1, 2, 3]})");
  ASSERT_THAT(full, IsOk());
  EXPECT_EQ(full->options.mode, EncodingMode::kApe);
  EXPECT_FLOAT_EQ(full->options.temperature, 0.55F);
  EXPECT_FLOAT_EQ(full->options.scale, 1.2F);
  EXPECT_EQ(full->options.form, ApeScaleForm::kAdditive);
  EXPECT_EQ(full->model_fingerprint, "ab12");

  // Files from before the form existed, or written by hand, mean the published form.
  const auto bare = ParseApeCalibration(R"({"temperature": 0.9, "scale": 0.9})");
  ASSERT_THAT(bare, IsOk());
  EXPECT_EQ(bare->options.form, ApeScaleForm::kMultiplicative);
  EXPECT_EQ(bare->model_fingerprint, "");
}

TEST(ApeOptionsTest, RefusesBadCalibrations) {
  const auto refused = [](const char* json, const char* why) {
    EXPECT_THAT(ParseApeCalibration(json),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(why)))
        << json;
  };
  refused("", "not a JSON object");
  refused("[0.9, 0.9]", "not a JSON object");
  refused(R"({"temperature": 0.9, "scale": 0.9)", "not a JSON object");
  refused(R"({"scale": 0.9})", "no number 'temperature'");
  refused(R"({"temperature": "0.9", "scale": 0.9})", "no number 'temperature'");
  refused(R"({"temperature": 0.9, "scale": -1})", "scale -1 is outside (0, 16]");
  refused(R"({"temperature": 1e9, "scale": 1})", "is outside (0, 4]");
  refused(R"({"temperature": 0.9, "scale": 0.9, "form": 1})", "'form' is not a string");
  refused(R"({"temperature": 0.9, "scale": 0.9, "form": "published"})",
          "'published' is not one of multiplicative, additive");
  refused(R"({"temperature": 0.9, "scale": 0.9, "model_fingerprint": 7})",
          "'model_fingerprint' is not a string");
}

}  // namespace
}  // namespace apeserve::model
