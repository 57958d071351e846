#include "model/hf_checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/fingerprint.h"

namespace apeserve::model {

absl::StatusOr<std::string> HfCheckpoint::ReadText(absl::string_view name) const {
  const std::string path = absl::StrCat(dir_, "/", name);
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("model folder has no readable '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<std::unique_ptr<HfCheckpoint>> HfCheckpoint::Open(const std::string& dir) {
  std::unique_ptr<HfCheckpoint> checkpoint(new HfCheckpoint(dir));
  std::set<std::string> shard_names;
  std::error_code error;
  if (std::filesystem::exists(dir + "/model.safetensors.index.json", error)) {
    APE_ASSIGN_OR_RETURN(const std::string text,
                         checkpoint->ReadText("model.safetensors.index.json"));
    const nlohmann::json index = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", dir, "/model.safetensors.index.json' has no weight_map object"));
    }
    for (const auto& [tensor, shard] : index["weight_map"].items()) {
      const std::string name = shard.is_string() ? shard.get<std::string>() : "";
      // An index is untrusted: it may only name plain files inside the folder.
      if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("model.safetensors.index.json maps '", tensor, "' to '", name,
                         "', which is not a file name inside the model folder"));
      }
      shard_names.insert(name);
    }
  } else {
    shard_names.insert("model.safetensors");
  }
  for (const std::string& name : shard_names) {
    APE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> shard,
                         SafetensorsFile::Open(absl::StrCat(dir, "/", name)));
    for (const auto& [tensor, info] : shard->tensors()) {
      if (!checkpoint->index_.emplace(tensor, &info).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", tensor, "' appears in two shards of '", dir, "'"));
      }
    }
    checkpoint->shards_.push_back(std::move(shard));
  }
  return checkpoint;
}

const SafetensorsTensor* HfCheckpoint::Find(absl::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::string FingerprintHf(const HfCheckpoint& checkpoint) {
  FingerprintBuilder builder;
  for (const auto& [name, tensor] : checkpoint.tensors()) {
    builder.AddTensor(name, tensor->dtype, absl::StrJoin(tensor->shape, ","), tensor->bytes);
  }
  return builder.Finish();
}

}  // namespace apeserve::model
