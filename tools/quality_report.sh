#!/usr/bin/env bash
# The README's quality table: for each task family, calibrate APE's T and S on half of
# a seeded item set, then evaluate SEQUENTIAL, PARALLEL and the calibrated APE on a
# fresh item set (another seed).
#   tools/quality_report.sh [BUILD_DIR] [OUT_DIR]   (defaults: build/default, var/quality)
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib.sh
build="${1:-build/default}"
out="${2:-var/quality}"
mkdir -p "$out"
model="$APESERVE_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
for family in rag lookup icl; do
  "$build/tools/apeeval" calibrate --model="$model" --device=cpu --family="$family" \
    --items=32 --seed=101 --out="$out/calibration-$family.json" > "$out/calibrate-$family.txt"
  "$build/tools/apeeval" eval --model="$model" --device=cpu --families="$family" \
    --items=24 --seed=7 --max_tokens=24 --calibration="$out/calibration-$family.json" \
    --json_out="$out/eval-$family.json" | tee "$out/eval-$family.txt"
done
