// Settings of one apeserve process. Flags become these once, in main.cc; nothing
// below main reads a flag.
#ifndef APESERVE_SERVER_SERVER_OPTIONS_H_
#define APESERVE_SERVER_SERVER_OPTIONS_H_

#include <string>

#include "model/ape_options.h"

namespace apeserve::server {

struct ServerOptions {
  // host:port to listen on; port 0 picks a free port (see ApeServer::port()).
  // Default: "127.0.0.1:50051" (loopback only: exposing it is a deliberate choice).
  std::string listen_address = "127.0.0.1:50051";
  // GGUF model file. Required.
  std::string model_path;
  // Folder of the document and KV store; created when missing. Required.
  std::string data_dir;
  // Compute device: "auto", "cpu", "cuda" or "cuda:N". Default: "auto".
  std::string device = "auto";
  // Largest request the server accepts, in bytes. Default: 64 MiB.
  int max_receive_message_bytes = 64 << 20;
  // APE's temperature, scale and scale form for requests that leave them unset (e.g.
  // the values `apeeval calibrate` chose for the model). Default: model::ApeOptions's,
  // the published form at the authors' T = S = 0.9.
  model::ApeOptions ape_defaults;
  // Where ape_defaults came from, for ServerInfo: the calibration file, or empty.
  std::string ape_calibration_file;
  // The model fingerprint the calibration names, if any. A calibration made for another
  // model is used, with a warning at start: its values are valid, but tuned elsewhere.
  std::string ape_calibration_fingerprint;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_SERVER_OPTIONS_H_
