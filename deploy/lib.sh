# Shared settings of the deploy/ scripts; sourced, never run.
#
# Everything heavy (the Python environment with libtorch, the models, the compiler
# cache) lives under APESERVE_HOME, outside the checkout, so that a fresh clone on
# the same machine reuses it. Each path can be overridden from the environment.

APESERVE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APESERVE_HOME="${APESERVE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/apeserve}"
APESERVE_VENV="${APESERVE_VENV:-$APESERVE_HOME/venv}"
APESERVE_MODELS="${APESERVE_MODELS:-$APESERVE_HOME/models}"
APESERVE_DEFAULT_MODEL="${APESERVE_DEFAULT_MODEL:-$APESERVE_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf}"
# APE's tuned defaults for the default model (tools/quality_report.sh); set it empty to
# serve with the built-in ones.
APESERVE_DEFAULT_CALIBRATION="${APESERVE_DEFAULT_CALIBRATION-$APESERVE_ROOT/deploy/calibration/SmolLM2-135M-Instruct.Q4_1.json}"
APESERVE_DATA_DIR="${APESERVE_DATA_DIR:-$APESERVE_ROOT/var/data}"
export APESERVE_ROOT APESERVE_HOME APESERVE_VENV APESERVE_MODELS APESERVE_DEFAULT_MODEL \
  APESERVE_DEFAULT_CALIBRATION APESERVE_DATA_DIR

# The compiler cache outlives checkouts too: CI's fresh clone compiles only what changed.
export CCACHE_DIR="${CCACHE_DIR:-$APESERVE_HOME/ccache}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
# Paths differ between clones (CI clones into a new folder each time); hash relative ones.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$APESERVE_ROOT}"
export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"

log() { printf '[apeserve %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $* (install sudo or run as root)"
  fi
}

# Installs the Debian packages named that are missing, and nothing else.
install_debian_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    if [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" != "ii " ]; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "Debian packages: all $# in place"
    return
  fi
  log "Debian packages: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Configures (once) and builds a CMake preset with two jobs, the size of our machines.
build_preset() {
  local preset="$1"
  local dir="$APESERVE_ROOT/build/$preset"
  cd "$APESERVE_ROOT"
  if [ ! -f "$dir/build.ninja" ]; then
    log "configuring preset '$preset'"
    cmake --preset "$preset" >&2
  fi
  log "building preset '$preset'"
  cmake --build --preset "$preset" -j "${APESERVE_JOBS:-2}" >&2
}
