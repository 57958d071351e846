#!/usr/bin/env bash
# The Docker image, built and exercised the way an operator uses it:
#   1. build it (deploy/docker-build.sh: Docker and the base image from Debian's packages);
#   2. start a container with a named volume and wait for its HEALTHCHECK;
#   3. ingest documents and ask a question through the container's port with apectl
#      (the image's own apectl, from a second container);
#   4. stop it (SIGTERM: exit status 0), start it again, and check that the documents
#      are served from the volume and give the same answer;
#   5. the same with deploy/compose.yaml (docker-compose from Debian's packages).
# The containers' ports are published on loopback only. Everything the test makes
# (containers, volumes, the compose project) is removed at exit.
# Usage: deploy/docker-test.sh [--no-build]   (--no-build: test apeserve:latest as it is)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$APESERVE_ROOT/deploy/docker-lib.sh"

build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    -h | --help)
      sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument '$arg' (try --help)" ;;
  esac
done

start=$SECONDS
image="${APESERVE_IMAGE:-apeserve:latest}"
ensure_docker_engine
if [ "$build" -eq 1 ]; then "$APESERVE_ROOT/deploy/docker-build.sh" "$image"; fi
built=$SECONDS

suffix="$$"
container="apeserve-test-$suffix"
volume="apeserve-test-data-$suffix"
project="apeserve-test-$suffix"
work="$(mktemp -d "${TMPDIR:-/tmp}/apeserve-docker-test.XXXXXX")"
compose_file="$APESERVE_ROOT/deploy/compose.yaml"
cleanup() {
  "$DOCKER" rm -f "$container" >/dev/null 2>&1 || true
  "$DOCKER" volume rm -f "$volume" >/dev/null 2>&1 || true
  if command -v docker-compose >/dev/null 2>&1; then
    docker-compose -f "$compose_file" -p "$project" down -v >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port="$(free_port)"
metrics_port="$(free_port)"
target="127.0.0.1:$port"

# apectl from the image, in a container of its own, through the published port.
apectl() {
  "$DOCKER" run --rm --network host -v "$work/docs:/docs:ro" --entrypoint apectl "$image" \
    --server="$target" --timeout=120s "$@"
}

# Waits until Docker reports the container's HEALTHCHECK healthy.
wait_healthy() {
  local name="$1" status="" waited=0
  while [ "$status" != "healthy" ]; do
    status="$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$name" 2>/dev/null || echo gone)"
    case "$status" in
      unhealthy | gone)
        "$DOCKER" logs "$name" >&2 || true
        die "container $name is $status"
        ;;
    esac
    [ "$waited" -lt 300 ] || die "container $name not healthy after 300 s (status '$status')"
    sleep 2
    waited=$((waited + 2))
  done
  log "container $name healthy after ${waited} s"
}

# Stops the container with SIGTERM and checks that the server exited cleanly.
stop_cleanly() {
  local name="$1"
  "$DOCKER" stop --time 30 "$name" >/dev/null
  local code
  code="$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$name")"
  [ "$code" = "0" ] || {
    "$DOCKER" logs "$name" >&2 || true
    die "container $name exited with status $code on SIGTERM, not 0"
  }
  log "container $name stopped on SIGTERM with exit status 0"
}

mkdir -p "$work/docs"
echo "The lighthouse keeper of Skerry Rock is named Ada Brennan." >"$work/docs/keeper.txt"
echo "The Skerry Rock lighthouse was built in 1891 from grey granite." >"$work/docs/history.txt"
echo "Ferries to Skerry Rock leave Port Ellis every Tuesday at nine." >"$work/docs/ferry.txt"
question="Who keeps the lighthouse on Skerry Rock?"

log "starting $container (volume $volume, gRPC published on $target)"
"$DOCKER" volume create "$volume" >/dev/null
"$DOCKER" run -d --name "$container" -v "$volume:/data" \
  -p "$target:50051" -p "127.0.0.1:$metrics_port:9464" \
  "$image" --metrics_listen=0.0.0.0:9464 >/dev/null
wait_healthy "$container"
# (Read whole first: grep -q would leave docker logs writing to a closed pipe.)
server_log="$("$DOCKER" logs "$container" 2>&1)"
grep -q "allocator: jemalloc" <<<"$server_log" ||
  die "the image's server does not run on jemalloc (server/allocator.h)"

apectl ingest /docs >&2
listed="$(apectl list)"
for id in keeper.txt history.txt ferry.txt; do
  grep -q "$id" <<<"$listed" || die "ingested document $id is not listed: $listed"
done
ask() {
  apectl --json generate --contexts=keeper.txt,history.txt,ferry.txt --max_tokens=16 \
    --temperature=0 "$question" | python3 -c 'import json, sys; print(json.load(sys.stdin)["text"])'
}
answer="$(ask)"
[ -n "$answer" ] || die "empty answer"
log "answer: $answer"
metrics="$("$DOCKER" run --rm --network host --entrypoint bash "$image" -c \
  "exec 3<>/dev/tcp/127.0.0.1/$metrics_port && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3")"
grep -q "apeserve_" <<<"$metrics" || die "no apeserve_ metrics on 127.0.0.1:$metrics_port"

stop_cleanly "$container"
"$DOCKER" start "$container" >/dev/null
wait_healthy "$container"
listed="$(apectl list)"
for id in keeper.txt history.txt ferry.txt; do
  grep -q "$id" <<<"$listed" || die "document $id is gone after the restart: $listed"
done
again="$(ask)"
[ "$again" = "$answer" ] || die "after the restart the answer changed: '$again' vs '$answer'"
log "after the restart: the documents are served from the volume, same answer"
stop_cleanly "$container"

# compose: the same image, a volume, and the metrics port, from deploy/compose.yaml.
install_debian_packages docker-compose
log "compose: starting project $project"
export APESERVE_IMAGE="$image" APESERVE_PORT="$target" APESERVE_METRICS_PORT="127.0.0.1:$metrics_port"
docker-compose -f "$compose_file" -p "$project" up -d --no-build >&2
compose_container="$(docker-compose -f "$compose_file" -p "$project" ps -q apeserve)"
wait_healthy "$compose_container"
apectl ingest /docs >&2
[ "$(ask)" = "$answer" ] || die "compose: another answer than the plain container's"
docker-compose -f "$compose_file" -p "$project" stop -t 30 >&2
code="$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$compose_container")"
[ "$code" = "0" ] || die "compose: the server exited with status $code on SIGTERM"
log "compose: healthy, answered, stopped with exit status 0"

size="$("$DOCKER" image inspect -f '{{.Size}}' "$image")"
log "docker test passed in $((SECONDS - start)) s (build $((built - start)) s, image $((size / 1000000)) MB)"
