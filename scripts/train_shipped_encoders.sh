#!/usr/bin/env bash
# Retrain the NIC encoders shipped in src/slidepress/weights/ (CPU, ~35 min on 2 cores).
# Usage: bash scripts/train_shipped_encoders.sh [RUNS_DIR]   (needs ../shared/data)
# Then: .venv/bin/python scripts/export_shipped_encoders.py RUNS_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
D=${SHARED_DATA:-../shared/data}
RUNS=${1:-runs/encoders}
SP=".venv/bin/slidepress train encoder --patch-size 64 --mpp 0.97 --code-size 128 --seed 0"
PCAM="pcam=$D/patches/pcam@0.97"
KATHER="kather=$D/patches/kather2016@0.495"
SLIDE="$D/slides/CMU-1-Small-Region.svs"
mkdir -p "$RUNS"
run() { local name=$1; shift; [ -f "$RUNS/$name/curves.png" ] && return 0; $SP "$@" -o "$RUNS/$name" --resume; }
run multitask --method multitask --data "$PCAM" --data "$KATHER" --slides "$SLIDE" \
  --limit-per-class 5000 --epochs 10 --steps-per-epoch 100 --patience 3
run supervised --method supervised --data "$PCAM" --limit-per-class 5000 --epochs 10 \
  --steps-per-epoch 100 --patience 3
run contrastive --method contrastive --slides "$SLIDE" --data "$PCAM" --limit-per-class 2000 \
  --epochs 10 --steps-per-epoch 150 --patience 3
run vae --method vae --data "$PCAM" --limit-per-class 5000 --epochs 10 --steps-per-epoch 80 \
  --patience 3
run bigan --method bigan --data "$PCAM" --limit-per-class 5000 --epochs 10 --steps-per-epoch 80 \
  --patience 4
