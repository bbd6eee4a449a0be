#!/usr/bin/env bash
# Retrain the NIC encoders shipped in src/slidepress/weights/ (CPU; ~12 min each on 2 cores).
# Usage: bash scripts/train_shipped_encoders.sh [RUNS_DIR]   (needs ../shared/data)
#        ONLY=vae bash scripts/train_shipped_encoders.sh     (one method; run two at once with
#        OMP_NUM_THREADS=1 each: small convs use 2 cores better as 2 processes)
# Then:  .venv/bin/python scripts/export_shipped_encoders.py RUNS_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
D=${SHARED_DATA:-../shared/data}
RUNS=${1:-runs/encoders}
SP=".venv/bin/slidepress train encoder --patch-size 64 --mpp 0.97 --code-size 128 --seed 0"
PCAM="pcam=$D/patches/pcam@0.97"
KATHER="kather=$D/patches/kather2016@0.495"
SLIDE="$D/slides/CMU-1-Small-Region.svs"
mkdir -p "$RUNS"
run() {
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [ "$ONLY" != "$name" ]; then return 0; fi
  if [ -f "$RUNS/$name/curves.png" ]; then return 0; fi  # finished
  $SP "$@" -o "$RUNS/$name" --resume
}
run multitask --method multitask --data "$PCAM" --data "$KATHER" --slides "$SLIDE" \
  --limit-per-class 5000 --epochs 10 --steps-per-epoch 100 --patience 3
run supervised --method supervised --data "$PCAM" --limit-per-class 5000 --epochs 6 \
  --steps-per-epoch 100 --patience 3
run contrastive --method contrastive --slides "$SLIDE" --data "$PCAM" --limit-per-class 2000 \
  --epochs 6 --steps-per-epoch 150 --patience 3
run vae --method vae --data "$PCAM" --limit-per-class 5000 --epochs 6 --steps-per-epoch 100 \
  --patience 3
run bigan --method bigan --data "$PCAM" --limit-per-class 5000 --epochs 6 --steps-per-epoch 100 \
  --patience 4
