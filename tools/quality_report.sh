#!/usr/bin/env bash
# The README's quality table, in one run:
#   1. calibrate APE once over all three task families (both scale forms, a grid and a
#      compass search, on half of a seeded item set per family; the other half held
#      out), writing the overall choice and each family's own best;
#   2. evaluate each family on a fresh item set (another seed): SEQUENTIAL, PARALLEL,
#      APE in the published form at the authors' T = S = 0.9, APE with the overall
#      choice, and APE with the family's own best in each form.
#   tools/quality_report.sh [BUILD_DIR] [OUT_DIR]   (defaults: build/default, var/quality)
# The overall choice, OUT_DIR/calibration.json, is what deploy/calibration/ ships for
# the embedded model (copy it there to update the server's defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib.sh
build="${1:-build/default}"
out="${2:-var/quality}"
mkdir -p "$out/per-family"
model="$APESERVE_DEFAULT_MODEL"
start=$SECONDS
"$build/tools/apeeval" calibrate --model="$model" --device=cpu --dtype=float32 \
  --families=rag,lookup,icl --items=32 --seed=101 \
  --out="$out/calibration.json" --per_family_out="$out/per-family" | tee "$out/calibrate.txt"
log "calibration took $((SECONDS - start)) s"
for family in rag lookup icl; do
  "$build/tools/apeeval" eval --model="$model" --device=cpu --dtype=float32 \
    --families="$family" --items=24 --seed=7 --max_tokens=24 \
    --calibration="$out/calibration.json,$out/per-family/$family-multiplicative.json,$out/per-family/$family-additive.json" \
    --json_out="$out/eval-$family.json" | tee "$out/eval-$family.txt"
done
log "quality report took $((SECONDS - start)) s"
