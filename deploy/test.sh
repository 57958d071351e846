#!/usr/bin/env bash
# The README's test command: sets up what is missing, builds, and runs the whole test
# suite with CTest. Usage: deploy/test.sh [PRESET] [extra ctest arguments]
# PRESET is a CMake preset from CMakePresets.json (default: "default"; "asan" builds
# the tests with AddressSanitizer and UndefinedBehaviorSanitizer; "tsan" builds and runs
# the cache tests, which need no torch, under ThreadSanitizer).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

preset="${1:-default}"
shift || true
# --bench-peers: tools.ttft_bench_quick times llama.cpp beside apeserve.
"$APESERVE_ROOT/deploy/setup.sh" --bench-peers
build_preset "$preset"
log "running tests of preset '$preset'"
cd "$APESERVE_ROOT"
ctest --preset "$preset" -j "${APESERVE_JOBS:-2}" "$@"
