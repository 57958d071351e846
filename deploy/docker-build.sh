#!/usr/bin/env bash
# Builds the apeserve image from the top-level Dockerfile on a machine without an image
# registry: installs and starts Docker from Debian's packages where it is missing, makes
# the base image with debootstrap, and builds with BuildKit on the host network. The
# BuildKit cache mounts keep pip's downloads, apt's packages and the compiler cache
# between builds; the build cache is kept within APESERVE_DOCKER_CACHE_GB (default 16).
# Prints the build time and the image size.
# Usage: deploy/docker-build.sh [TAG]   (default apeserve:latest)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$APESERVE_ROOT/deploy/docker-lib.sh"

tag="${1:-apeserve:latest}"
case "$tag" in -h | --help)
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
  ;;
esac

ensure_docker_engine
check_buildkit_client
ensure_base_image

# pip inside the build trusts the same certificate authorities as this machine (which
# may reach PyPI through a proxy with its own CA); passed as a secret, never stored.
secret=()
ca_bundle="${APESERVE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
if [ -s "$ca_bundle" ]; then secret=(--secret "id=ca_bundle,src=$ca_bundle"); fi

start=$SECONDS
log "building $tag (base $APESERVE_BASE_IMAGE)"
"$DOCKER" build --network host --progress plain \
  --build-arg "BASE_IMAGE=$APESERVE_BASE_IMAGE" ${secret[@]+"${secret[@]}"} \
  -t "$tag" "$APESERVE_ROOT" >&2
size="$("$DOCKER" image inspect -f '{{.Size}}' "$tag")"
# Each build of a changed tree leaves gigabytes of layers behind (the torch environment
# alone is 6 GB): keep the most recently used within a budget, and drop the images
# this tag replaced.
"$DOCKER" builder prune -f --keep-storage "${APESERVE_DOCKER_CACHE_GB:-16}GB" >/dev/null
"$DOCKER" image prune -f >/dev/null
log "built $tag in $((SECONDS - start)) s; image size $((size / 1000000)) MB"
