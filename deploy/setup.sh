#!/usr/bin/env bash
# Installs everything apeserve needs to build, test and run, and nothing twice:
#   1. Debian packages (compilers, gRPC, Protobuf, RocksDB, spdlog, abseil, GoogleTest...)
#   2. a Python environment with libtorch and the test oracle (deploy/requirements.txt)
#   3. the default model, taken out of its PyPI wheel and verified (deploy/models.lock)
#   4. with --bench-peers: llama.cpp's server (llama-server), the peer of
#      tools/ttft_bench.py, compiled once per machine from source (deploy/test.sh)
# Each step first checks whether its result is already in place; a second run only
# checks. Usage: deploy/setup.sh [--skip-apt] [--bench-peers]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

skip_apt=0
bench_peers=0
for arg in "$@"; do
  case "$arg" in
    --skip-apt) skip_apt=1 ;;
    --bench-peers) bench_peers=1 ;;
    -h | --help)
      sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument '$arg' (try --help)" ;;
  esac
done

APT_PACKAGES=(
  # toolchain
  g++ cmake ninja-build ccache pkg-config git ca-certificates clang-format clang-tidy
  python3 python3-venv
  # certificates for the TLS tests
  openssl
  # the fuzzers (deploy/fuzz.sh): clang and its libFuzzer and sanitizer runtimes
  clang libclang-rt-14-dev
  # libraries
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libspdlog-dev libabsl-dev nlohmann-json3-dev libxxhash-dev libpcre2-dev
  libjemalloc-dev
  libcpp-httplib-dev libssl-dev
  libgtest-dev libgmock-dev
)

# The stamp records which requirements file the environment was built from; pip runs
# only when it changed (or the environment is missing or broken).
install_python_env() {
  local req="$APESERVE_ROOT/deploy/requirements.txt"
  local stamp="$APESERVE_VENV/.apeserve-requirements.sha256"
  local want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ -x "$APESERVE_VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "Python environment: $APESERVE_VENV in place"
    return
  fi
  if ! "$APESERVE_VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "Python environment: creating $APESERVE_VENV"
    rm -rf "$APESERVE_VENV"
    python3 -m venv "$APESERVE_VENV"
  fi
  log "Python environment: installing deploy/requirements.txt (torch brings several GB of CUDA libraries)"
  "$APESERVE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  echo "$want" >"$stamp"
}

# Prints "OK" when the file at $1 has size $2, SHA-256 $3 and starts with the GGUF magic.
verify_model() {
  local file="$1" bytes="$2" sha="$3"
  [ -f "$file" ] || { echo "missing"; return; }
  local size
  size="$(stat -c %s "$file")"
  [ "$size" = "$bytes" ] || { echo "size $size, expected $bytes"; return; }
  [ "$(head -c 4 "$file")" = "GGUF" ] || { echo "no GGUF magic"; return; }
  local got
  got="$(sha256sum "$file" | cut -d' ' -f1)"
  [ "$got" = "$sha" ] || { echo "sha256 $got, expected $sha"; return; }
  echo "OK"
}

install_models() {
  mkdir -p "$APESERVE_MODELS"
  local name sha bytes wheel member verdict
  while read -r name sha bytes wheel member; do
    case "$name" in '' | '#'*) continue ;; esac
    local dest="$APESERVE_MODELS/$name"
    verdict="$(verify_model "$dest" "$bytes" "$sha")"
    if [ "$verdict" = "OK" ]; then
      log "model $name: in place and verified"
      continue
    fi
    log "model $name: $verdict; fetching $wheel from PyPI"
    local tmp
    tmp="$(mktemp -d "$APESERVE_HOME/tmp.XXXXXX")"
    "$APESERVE_VENV/bin/python" -m pip download --quiet --disable-pip-version-check \
      --no-deps --only-binary=:all: -d "$tmp" "$wheel" >&2
    # A wheel is a zip; stream the one member out instead of unpacking the whole wheel.
    "$APESERVE_VENV/bin/python" - "$tmp" "$member" "$tmp/$name" <<'PY'
import glob, shutil, sys, zipfile
folder, member, out = sys.argv[1:]
wheels = glob.glob(folder + "/*.whl")
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {folder}, found {len(wheels)}")
with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    verdict="$(verify_model "$tmp/$name" "$bytes" "$sha")"
    [ "$verdict" = "OK" ] || die "model $name from $wheel failed verification: $verdict"
    mv -f "$tmp/$name" "$dest" # same file system: atomic
    rm -rf "$tmp"
    log "model $name: verified and placed at $dest"
  done <"$APESERVE_ROOT/deploy/models.lock"
}

# llama.cpp's own server, the peer of tools/ttft_bench.py, built once per machine from
# the llama.cpp tree that the pinned llama-cpp-python source package vendors (PyPI is
# the only place this machine reaches). A static binary with this CPU's instruction
# set (GGML_NATIVE, what a user who compiles it gets), without the web UI (which would
# be downloaded) or TLS. It lands in $APESERVE_HOME/llama.cpp, so a fresh clone on the
# same machine does not compile it again; a version stamp says what is there.
LLAMA_CPP_SOURCE_PACKAGE=llama-cpp-python==0.3.36
install_llama_server() {
  local dest="$APESERVE_HOME/llama.cpp"
  if [ -x "$dest/bin/llama-server" ] && [ "$(cat "$dest/.version" 2>/dev/null)" = "$LLAMA_CPP_SOURCE_PACKAGE" ]; then
    log "llama-server: built from $LLAMA_CPP_SOURCE_PACKAGE, in place"
    return
  fi
  log "llama-server: compiling the llama.cpp tree of $LLAMA_CPP_SOURCE_PACKAGE (once per machine, minutes)"
  local tmp
  tmp="$(mktemp -d "$APESERVE_HOME/tmp.XXXXXX")"
  "$APESERVE_VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: -d "$tmp" "$LLAMA_CPP_SOURCE_PACKAGE" >&2
  tar -xzf "$tmp"/*.tar.gz -C "$tmp"
  local source
  source="$(echo "$tmp"/*/vendor/llama.cpp)"
  [ -f "$source/tools/server/server.cpp" ] || die "no llama.cpp server in $LLAMA_CPP_SOURCE_PACKAGE"
  cmake -S "$source" -B "$tmp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF >&2
  cmake --build "$tmp/build" --target llama-server -j "${APESERVE_JOBS:-2}" >&2
  rm -rf "$dest"
  mkdir -p "$dest/bin"
  cp "$tmp/build/bin/llama-server" "$dest/bin/"
  cp "$source/LICENSE" "$dest/"
  echo "$LLAMA_CPP_SOURCE_PACKAGE" >"$dest/.version"
  rm -rf "$tmp"
  log "llama-server: installed at $dest/bin/llama-server"
}

main() {
  local start=$SECONDS
  mkdir -p "$APESERVE_HOME"
  # One set-up at a time: run.sh and test.sh may start together.
  exec 9>"$APESERVE_HOME/.setup.lock"
  flock 9
  if [ "$skip_apt" -eq 0 ]; then install_debian_packages "${APT_PACKAGES[@]}"; fi
  install_python_env
  install_models
  if [ "$bench_peers" -eq 1 ]; then install_llama_server; fi
  log "set-up complete in $((SECONDS - start)) s (APESERVE_HOME=$APESERVE_HOME)"
}

main
