#!/usr/bin/env bash
# The README's run command: sets up what is missing, builds, and starts apeserve with
# the embedded default model, its APE calibration (deploy/calibration/) and the embedded
# data directory (var/data in the checkout). Extra arguments go to apeserve and win over
# these, e.g. deploy/run.sh --listen=0.0.0.0:50051 --ape_temperature=0.8
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$APESERVE_ROOT/deploy/setup.sh"
build_preset default
mkdir -p "$APESERVE_DATA_DIR"
calibration=()
if [ -n "$APESERVE_DEFAULT_CALIBRATION" ]; then
  calibration=(--ape_calibration="$APESERVE_DEFAULT_CALIBRATION")
fi
log "starting apeserve (model $APESERVE_DEFAULT_MODEL, APE calibration ${APESERVE_DEFAULT_CALIBRATION:-built in}, data $APESERVE_DATA_DIR)"
exec "$APESERVE_ROOT/build/default/server/apeserve" \
  --model="$APESERVE_DEFAULT_MODEL" --data_dir="$APESERVE_DATA_DIR" ${calibration[@]+"${calibration[@]}"} "$@"
