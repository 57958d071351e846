#!/usr/bin/env bash
# The regression guard: builds commit BASE in a git worktree and measures its server
# against the working tree's, in one run, interleaved (tools/bench_compare.py): warm time
# to first token on the RAG workload (K = 16), decode tokens/s at batch 1, tokens/s at 8
# clients, ingest tokens/s and peak RSS, with the ratios working tree / base.
#
# Run it before a change to model/, the scheduler, the KV tiers, the allocator or the
# build flags lands, against the commit before it, and quote its table in the change's
# note. Usage: tools/bench_compare.sh BASE [bench_compare.py arguments, e.g. --rounds 3]
#        tools/bench_compare.sh BASE --service [service_bench.py arguments]
# --service runs the live-service benchmark (tools/service_bench.py) on the same two
# builds instead: warm TTFT at 16 x 448 and 128 x 1024, the client sweep, live traffic.
# The worktree stays in $APESERVE_HOME/compare/<commit> (its build is reused next time);
# the compiler cache is shared, so only what differs is compiled.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/lib.sh"

base="${1:-}"
[ -n "$base" ] && [ "$base" != "-h" ] && [ "$base" != "--help" ] ||
  { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }
shift
tool="bench_compare.py"
if [ "${1:-}" = "--service" ]; then
  tool="service_bench.py"
  shift
fi
commit="$(git -C "$APESERVE_ROOT" rev-parse --verify --quiet "$base^{commit}")" ||
  die "'$base' is not a commit of this repository"
"$APESERVE_ROOT/deploy/setup.sh"

worktree="$APESERVE_HOME/compare/$commit"
if [ ! -e "$worktree/.git" ]; then
  log "checking out $base ($commit) into $worktree"
  mkdir -p "$APESERVE_HOME/compare"
  git -C "$APESERVE_ROOT" worktree prune
  git -C "$APESERVE_ROOT" worktree add --detach --force "$worktree" "$commit" >&2
fi

# Only the server: the base's own presets and flags, ccache keyed on paths relative to
# each tree so that identical sources hit.
build_server() {
  local root="$1"
  (
    cd "$root"
    export CCACHE_BASEDIR="$root"
    [ -f build/default/build.ninja ] || cmake --preset default >&2
    cmake --build build/default --target apeserve -j "${APESERVE_JOBS:-2}" >&2
  )
}
log "building the server of $base"
build_server "$worktree"
log "building the server of the working tree"
build_server "$APESERVE_ROOT"

dirty=""
git -C "$APESERVE_ROOT" diff --quiet HEAD -- || dirty=" + uncommitted changes"
"$APESERVE_VENV/bin/python" "$APESERVE_ROOT/tools/$tool" \
  --base "$worktree/build/default/server/apeserve" \
  --head "$APESERVE_ROOT/build/default/server/apeserve" \
  --base_label "$base ($(git -C "$APESERVE_ROOT" log -1 --format='%h %s' "$commit" | cut -c1-70))" \
  --head_label "working tree ($(git -C "$APESERVE_ROOT" log -1 --format='%h' HEAD)$dirty)" "$@"
