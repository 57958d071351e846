// A Hugging Face model folder: config.json, the weights in one safetensors file or in
// shards listed by model.safetensors.index.json, and the tokenizer files beside them.
// Thread-safety: immutable after Open().
#ifndef APESERVE_MODEL_HF_CHECKPOINT_H_
#define APESERVE_MODEL_HF_CHECKPOINT_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/safetensors_file.h"

namespace apeserve::model {

class HfCheckpoint {
 public:
  // NOT_FOUND: no config.json or no weights in `dir`. INVALID_ARGUMENT: a malformed
  // index or shard, or an index naming a file outside the folder.
  static absl::StatusOr<std::unique_ptr<HfCheckpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // The folder's file `name` ("config.json", "tokenizer.json", ...), read whole.
  // NOT_FOUND when absent.
  absl::StatusOr<std::string> ReadText(absl::string_view name) const;

  // nullptr when absent.
  const SafetensorsTensor* Find(absl::string_view name) const;
  // Every tensor, in name order.
  const std::map<std::string, const SafetensorsTensor*, std::less<>>& tensors() const {
    return index_;
  }

 private:
  explicit HfCheckpoint(std::string dir) : dir_(std::move(dir)) {}

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, const SafetensorsTensor*, std::less<>> index_;
};

// The fingerprint of every tensor of the checkpoint, in name order.
std::string FingerprintHf(const HfCheckpoint& checkpoint);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_HF_CHECKPOINT_H_
