#!/usr/bin/env bash
# Issue 24: long, resumable NIC encoder runs in the background (CPU, lowest priority).
# Usage: bash scripts/train_nic24.sh [METHOD ...]     (default: vae simclr)
#   Each METHOD runs in runs/nic24/METHOD/ (git-ignored), resuming its checkpoint.pt when
#   there is one, else the committed snapshot training_state/nic24/METHOD/ (fresh clone; see
#   scripts/snapshot_nic24.py), else from scratch. Two methods at once at most on 2 cores.
#   Log: runs/nic24/METHOD.log; PID: runs/nic24/METHOD.pid (beside the run folder, which the
#   trainer wants empty when it starts from scratch).
#   Recipes (data, options, settings): src/slidepress/training/nic/nic24.py.
# Stop one: kill "$(cat runs/nic24/METHOD.pid)"   (the last checkpoint is kept: at most one
#   epoch, 200 steps, is lost). Snapshot for a commit: .venv/bin/python scripts/snapshot_nic24.py
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/nic24}
SNAPS=${SNAPS:-training_state/nic24}
THREADS=${THREADS:-1}  # per run: two single-thread runs use 2 cores better than one with 2
methods=("$@")
[ ${#methods[@]} -eq 0 ] && methods=(vae simclr)
for m in "${methods[@]}"; do
  log="$RUNS/$m.log" pid="$RUNS/$m.pid"
  mkdir -p "$RUNS"
  if [ -f "$pid" ] && kill -0 "$(cat "$pid")" 2>/dev/null; then
    echo "$m: already running (pid $(cat "$pid"))"; continue
  fi
  bash -c '
    echo 19 > /proc/self/autogroup
    export OMP_NUM_THREADS='"$THREADS"' MKL_NUM_THREADS='"$THREADS"'
    exec nohup .venv/bin/python -m slidepress.training.nic.nic24 '"$m"' --runs '"$RUNS"' \
      --snapshots '"$SNAPS"' --threads '"$THREADS"' >> '"$log"' 2>&1
  ' &
  echo $! > "$pid"
  echo "$m: started pid $(cat "$pid"), log $log"
done
