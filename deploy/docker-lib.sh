# Docker helpers of the deploy/ scripts; sourced after lib.sh, never run.
#
# Our machines reach Debian's packages and PyPI but no image registry, so everything
# Docker needs comes from Debian: the engine (docker.io), compose (docker-compose) and
# the base image, made with debootstrap and `docker import`.

# The docker client: DOCKER when the caller sets it, else Debian's /usr/bin/docker, which
# has BuildKit built in. It is chosen by ensure_docker_engine, after docker.io is
# installed: on a fresh machine a newer client (docker-ce 23 or later, in /usr/local/bin)
# may come first on PATH, and it builds with BuildKit only through the separate buildx
# plugin, which Debian does not package.
DOCKER="${DOCKER:-}"
export DOCKER_BUILDKIT=1

# Fails with the remedy when the client cannot build with BuildKit: clients from 23 on
# need the buildx plugin for it.
check_buildkit_client() {
  local version major
  # (`docker version` fails when the engine does not answer, after the client's line.)
  version="$("$DOCKER" version --format '{{.Client.Version}}' 2>/dev/null | head -n 1 || true)"
  major="${version%%.*}"
  [[ "$major" =~ ^[0-9]+$ ]] || major=0
  if [ "$major" -ge 23 ] && ! "$DOCKER" buildx version >/dev/null 2>&1; then
    die "the docker client $DOCKER ($version) builds with BuildKit only through the buildx" \
      "plugin, which is missing; use Debian's client (DOCKER=/usr/bin/docker) or install buildx"
  fi
}

# The base image of both stages of the Dockerfile when no registry is reachable.
APESERVE_BASE_IMAGE="${APESERVE_BASE_IMAGE:-apeserve/debian:bookworm}"
APESERVE_DEBIAN_MIRROR="${APESERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# Installs the engine when it is missing and starts it when it does not answer
# (machines without systemd: dockerd in the background, its log in APESERVE_HOME).
ensure_docker_engine() {
  install_debian_packages docker.io
  if [ -z "$DOCKER" ]; then DOCKER=/usr/bin/docker; fi
  export DOCKER
  if "$DOCKER" info >/dev/null 2>&1; then return; fi
  mkdir -p "$APESERVE_HOME"
  log "starting dockerd (log: $APESERVE_HOME/dockerd.log)"
  as_root sh -c "nohup dockerd >>'$APESERVE_HOME/dockerd.log' 2>&1 &"
  local waited=0
  until "$DOCKER" info >/dev/null 2>&1; do
    [ "$waited" -lt 60 ] || die "dockerd did not answer within 60 s; see $APESERVE_HOME/dockerd.log"
    sleep 1
    waited=$((waited + 1))
  done
}

# Makes APESERVE_BASE_IMAGE from Debian's packages when it is not there yet: a minimal
# bookworm root file system (debootstrap --variant=minbase) imported as an image.
ensure_base_image() {
  if "$DOCKER" image inspect "$APESERVE_BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $APESERVE_BASE_IMAGE in place"
    return
  fi
  install_debian_packages debootstrap
  local rootfs
  rootfs="$(mktemp -d "${TMPDIR:-/tmp}/apeserve-rootfs.XXXXXX")"
  log "base image: debootstrap bookworm from $APESERVE_DEBIAN_MIRROR"
  as_root debootstrap --variant=minbase bookworm "$rootfs" "$APESERVE_DEBIAN_MIRROR" >&2
  # Smaller layers: no package lists, no documentation.
  as_root rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
  as_root tar -C "$rootfs" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$APESERVE_BASE_IMAGE" >/dev/null
  as_root rm -rf "$rootfs"
  log "base image $APESERVE_BASE_IMAGE imported"
}
