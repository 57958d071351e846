#!/usr/bin/env bash
# Static quality gates run by CI after the tests: clang-format over every project
# source file, then clang-tidy over every translation unit of the default build.
# Usage: deploy/check.sh [format|tidy]... (default: both)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$APESERVE_ROOT"

project_sources() {
  git ls-files -- '*.h' '*.cc' ':!:build/**'
}

check_format() {
  log "clang-format: checking $(project_sources | wc -l) files"
  project_sources | xargs clang-format --dry-run --Werror
  log "clang-format: clean"
}

check_tidy() {
  local db="$APESERVE_ROOT/build/default"
  [ -f "$db/compile_commands.json" ] || build_preset default
  local files
  files="$(git ls-files -- '*.cc')"
  log "clang-tidy: checking $(echo "$files" | wc -l) files"
  # shellcheck disable=SC2086 # one file per word
  run-clang-tidy -quiet -j "${APESERVE_JOBS:-2}" -p "$db" $files >"$db/clang-tidy.log" 2>&1 || {
    grep -E "(warning|error):" "$db/clang-tidy.log" | sort -u >&2
    die "clang-tidy found problems (full log: $db/clang-tidy.log)"
  }
  log "clang-tidy: clean"
}

steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(format tidy)
for step in "${steps[@]}"; do
  case "$step" in
    format) check_format ;;
    tidy) check_tidy ;;
    *) die "unknown check '$step' (format or tidy)" ;;
  esac
done
