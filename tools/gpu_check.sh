#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run of a few minutes, for whoever has one
# at hand: on a machine that deploy/setup.sh prepared (the torch wheel it installs is a
# CUDA build, so the default preset's binaries already run on CUDA through libtorch)
# and that has a GPU with its driver.
#
#   tools/gpu_check.sh [--skip-build] [--out DIR]
#   tools/gpu_check.sh --rehearse     # the same steps on the CPU in bfloat16, no GPU needed
#
# 1. The GPU as the driver and libtorch see it.
# 2. The build: the default preset (compiler cache; a few minutes from nothing).
# 3. The gpu-labelled tests (ctest --preset gpu): the runtime finds the device and passes
#    its self-test; APE's invariants and batching equal to alone (ApeTest, BatchTest) in
#    bfloat16; parity with transformers in bfloat16 (bounds in llama_parity_test.py).
# 4. The live-service benchmark's headline rows on the GPU (tools/service_bench.py, this
#    build as both sides, short windows): warm time to first token at 16 x 448 and
#    128 x 1,024, tokens/s from 1 to 16 clients, inter-token p99 without and with
#    ingestion. Its floors are the CPU's and mean nothing here.
#
# Prints a summary and exits non-zero when a step failed. Logs and the benchmark's JSON
# go to DIR (default build/gpu_check). --rehearse runs steps 3 and 4 on the CPU with the
# tests' device set to cpu in bfloat16 (the same test code and bounds) and the
# benchmark's quick settings: the script itself checked where no GPU is.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/deploy/lib.sh"

skip_build=0
rehearse=0
out="$APESERVE_ROOT/build/gpu_check"
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-build) skip_build=1 ;;
    --rehearse) rehearse=1 ;;
    --out) out="$2"; shift ;;
    --out=*) out="${1#--out=}" ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
mkdir -p "$out"
python="$APESERVE_VENV/bin/python"
build="$APESERVE_ROOT/build/default"
[ -x "$python" ] || die "no Python environment at $APESERVE_VENV: run deploy/setup.sh first"

failed=()
# Runs step $1 (a title) as the rest of the arguments, its output teed to DIR/$2.log.
step() {
  local title="$1" name="$2"
  shift 2
  log "$title"
  local started=$SECONDS
  if "$@" 2>&1 | tee "$out/$name.log"; then
    log "$title: passed in $((SECONDS - started)) s"
  else
    log "$title: FAILED after $((SECONDS - started)) s (see $out/$name.log)"
    failed+=("$title")
  fi
}

# 1. The device.
if [ "$rehearse" -eq 0 ]; then
  command -v nvidia-smi >/dev/null 2>&1 || die "no nvidia-smi: is the NVIDIA driver installed?"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader |
    tee "$out/device.log"
  "$python" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit("libtorch sees no CUDA device (torch " + torch.__version__ + ")")
print("torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name(0))' |
    tee -a "$out/device.log"
else
  log "rehearsal: the CPU in bfloat16 stands in for the GPU"
fi

# 2. The build.
if [ "$skip_build" -eq 0 ]; then
  started=$SECONDS
  build_preset default
  log "build: $((SECONDS - started)) s"
fi
[ -x "$build/server/apeserve" ] || die "no build at $build (run without --skip-build)"

# 3. The gpu-labelled tests.
if [ "$rehearse" -eq 0 ]; then
  step "gpu-labelled tests" tests ctest --preset gpu --output-on-failure
else
  # The tests ctest's gpu preset runs, less the one that asserts a CUDA device, with
  # the device the gpu preset sets replaced by the CPU.
  export APESERVE_TEST_DEVICE=cpu APESERVE_TEST_DTYPE=bfloat16
  step "APE invariants and batching in bfloat16" model_tests \
    "$build/tests/model_test" \
    "--gtest_filter=ApeTest.*:BatchTest.*-ApeTest.AnswersWithManyShortContexts"
  step "parity with transformers in bfloat16" parity env \
    "APESERVE_TEST_MODEL=$APESERVE_DEFAULT_MODEL" "APEGEN=$build/tools/apegen" \
    PYTHONDONTWRITEBYTECODE=1 "$python" "$APESERVE_ROOT/tests/model/llama_parity_test.py"
  unset APESERVE_TEST_DEVICE APESERVE_TEST_DTYPE
fi

# 4. The benchmark's headline rows.
bench_settings=(--points 16x448,128x1024 --runs 3 --window_s 15)
[ "$rehearse" -eq 1 ] && bench_settings=(--quick)
step "live-service benchmark" bench env PYTHONDONTWRITEBYTECODE=1 "$python" \
  "$APESERVE_ROOT/tools/service_bench.py" "${bench_settings[@]}" --check \
  "--base=$build/server/apeserve" "--head=$build/server/apeserve" \
  --base_label="this build" --head_label="this build, again" "--json=$out/service_bench.json"

if [ "${#failed[@]}" -gt 0 ]; then
  log "gpu check FAILED: ${failed[*]} (logs in $out)"
  exit 1
fi
log "gpu check passed (logs and the benchmark's JSON in $out)"
