// Logging for code compiled with torch's include folder.
//
// The torch wheel bundles fmt 12 (and protobuf) headers in its include folder, which
// shadow Debian's fmt 9 that spdlog is built against; spdlog therefore cannot be
// included in a target that sees torch headers. Such code builds its message with
// absl::StrCat and logs through these functions, compiled here without torch.
#ifndef APESERVE_COMMON_LOGGING_H_
#define APESERVE_COMMON_LOGGING_H_

#include "absl/strings/string_view.h"

namespace apeserve {

// Sends spdlog's default logger to standard error (standard output stays for results);
// programs call it first thing in main().
void LogToStderr();

void LogInfo(absl::string_view message);
void LogWarning(absl::string_view message);

}  // namespace apeserve

#endif  // APESERVE_COMMON_LOGGING_H_
