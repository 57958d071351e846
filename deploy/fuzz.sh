#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (the "fuzz" preset: clang, ASan + UBSan),
# writes their seed corpora and runs each target in turn, one process at a time.
#
# Usage: deploy/fuzz.sh [--runs N | --seconds S] [target...]
#   --runs N      executions per target (libFuzzer -runs=N)
#   --seconds S   time per target (-max_total_time=S). Default: --seconds 30
#   target        gguf or gguf_fuzzer, ...; default: every tests/fuzz/*_fuzzer.cc
#
# Prints per target its executions, coverage (cov: edges, ft: features, from
# libFuzzer's final stats) and speed, and fails if any target finds a crash, a leak,
# undefined behaviour, a broken invariant, a slow unit or an out-of-memory input; the
# input that did it stays in build/fuzz/artifacts/<target>/. Corpora grow in
# build/fuzz/corpus/<target> from run to run; each run's log is build/fuzz/logs/<target>.log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

runs=""
seconds=30
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs)
      [ $# -ge 2 ] || die "--runs needs a count"
      runs="$2"
      shift 2
      ;;
    --seconds)
      [ $# -ge 2 ] || die "--seconds needs a number"
      seconds="$2"
      runs=""
      shift 2
      ;;
    -h | --help)
      sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
      targets+=("${1%_fuzzer}")
      shift
      ;;
  esac
done

cd "$APESERVE_ROOT"
all_targets=()
for source in tests/fuzz/*_fuzzer.cc; do
  name="$(basename "$source" .cc)"
  all_targets+=("${name%_fuzzer}")
done
[ "${#targets[@]}" -gt 0 ] || targets=("${all_targets[@]}")
for target in "${targets[@]}"; do
  [ -f "tests/fuzz/${target}_fuzzer.cc" ] ||
    die "no fuzz target '$target' (there are: ${all_targets[*]})"
done

"$APESERVE_ROOT/deploy/setup.sh"
build_preset fuzz

fuzz_dir="$APESERVE_ROOT/build/fuzz"
bin_dir="$fuzz_dir/tests/fuzz"
seeds="$fuzz_dir/seeds"
rm -rf "$seeds"
model_args=()
[ -f "$APESERVE_DEFAULT_MODEL" ] && model_args=("$APESERVE_DEFAULT_MODEL")
"$bin_dir/fuzz_seeds" "$seeds" "${model_args[@]}"

# The dictionary of each target's input format, if it has one.
dictionary_of() {
  case "$1" in
    gguf) echo gguf ;;
    safetensors | safetensors_header | tokenizer_json | hf_config) echo json ;;
    tokenizer_encode | upload_text) echo text ;;
    *) echo "" ;;
  esac
}

# Sanitizers stop at the first report, so libFuzzer saves the input that caused it.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=()
report=()
for target in "${targets[@]}"; do
  corpus="$fuzz_dir/corpus/$target"
  artifacts="$fuzz_dir/artifacts/$target"
  log="$fuzz_dir/logs/$target.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")" "$seeds/$target"
  args=(-print_final_stats=1 "-artifact_prefix=$artifacts/" -timeout=25 -rss_limit_mb=2048)
  if [ -n "$runs" ]; then
    args+=("-runs=$runs")
    budget="$runs runs"
  else
    args+=("-max_total_time=$seconds")
    budget="$seconds s"
  fi
  dictionary="$(dictionary_of "$target")"
  [ -z "$dictionary" ] || args+=("-dict=tests/fuzz/dicts/$dictionary.dict")
  log "fuzzing '$target' ($budget); log: $log"
  status=0
  "$bin_dir/${target}_fuzzer" "${args[@]}" "$corpus" "$seeds/$target" >"$log" 2>&1 || status=$?

  executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  # The last status line (DONE when the run finished) holds the final coverage.
  last="$(grep -E '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)"
  cov="$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
  result=ok
  if [ "$status" -ne 0 ]; then
    result="FAILED (exit $status)"
    failed+=("$target")
    grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|fuzz invariant broken|artifact_prefix|Test unit written)' \
      "$log" | head -8 >&2 || true
  fi
  report+=("$(printf '%-20s %-16s %12s %10s %8s %8s' "$target" "$result" "${executions:-?}" \
    "${speed:-?}" "${cov:-?}" "${ft:-?}")")
done

printf '%-20s %-16s %12s %10s %8s %8s\n' target result executions exec/s cov ft
printf '%s\n' "${report[@]}"
[ "${#failed[@]}" -eq 0 ] ||
  die "fuzzing found problems in: ${failed[*]} (inputs in build/fuzz/artifacts, logs in build/fuzz/logs)"
log "fuzzing: no findings"
