#!/usr/bin/env bash
# Issue 23: the learned codec's long, resumable fine-tuning run in the background (CPU, lowest
# priority, one thread).
# Usage: bash scripts/train_codec_long.sh [extra scripts/train_codec.py options]
#   Runs in runs/codec-long/ (git-ignored): resumes its checkpoint.pt when there is one (exact),
#   else rebuilds it from the committed snapshot training_state/codec/ (a fresh clone; see
#   scripts/snapshot_codec.py), else warm-starts from the shipped weights folder
#   (src/slidepress/weights/codec-he-shallow; training/codec_warmstart.py).
#   Data: --data he-all (samplers.HE_ALL_DATA). Adam, lr 2e-4 (200-step warm-up) cosine to
#   1e-5 over STEPS steps (no time cap: the schedule follows the steps, across sessions),
#   batch 16, a checkpoint + validation row every 500 steps.
#   Log: runs/codec-long.log; PID: runs/codec-long.pid (beside the run folder, which the
#   trainer wants empty when it starts).
#   To survive the launching shell: setsid nohup bash scripts/train_codec_long.sh &
# Stop: kill "$(cat runs/codec-long.pid)"   (the last checkpoint is kept: at most 500 steps lost)
# Snapshot for a commit: .venv/bin/python scripts/snapshot_codec.py
# Export the best weights: .venv/bin/python scripts/export_codec.py runs/codec-long -o FOLDER
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/codec-long}
SNAP=${SNAP:-training_state/codec}
INIT=${INIT:-src/slidepress/weights/codec-he-shallow}
STEPS=${STEPS:-300000}
LR=${LR:-2e-4}
LR_FINAL=${LR_FINAL:-1e-5}
THREADS=${THREADS:-1}
log="$RUN.log" pid="$RUN.pid"
mkdir -p "$(dirname "$RUN")"
if [ -f "$pid" ] && kill -0 "$(cat "$pid")" 2>/dev/null; then
  echo "already running (pid $(cat "$pid")), log $log"; exit 0
fi
args=(-o "$RUN" --data he-all --init-from "$INIT" --snapshot "$SNAP" --steps "$STEPS"
      --hours 0 --lr "$LR" --lr-final "$LR_FINAL" --batch 16 --threads "$THREADS"
      --checkpoint-every 500 "$@")
if [ -f "$RUN/checkpoint.pt" ]; then
  args+=(--resume)
elif [ -d "$RUN" ] && [ -n "$(ls -A "$RUN")" ]; then  # a session that died before its first
  aside="$RUN.incomplete.$(date +%Y%m%d-%H%M%S)"     # checkpoint: nothing to resume there
  mv "$RUN" "$aside"
  echo "$RUN had no checkpoint.pt: moved to $aside"
fi
echo "=== $(date -Iseconds) session start: ${args[*]}" >> "$log"
bash -c '
  echo 19 > /proc/self/autogroup 2>/dev/null || true
  export OMP_NUM_THREADS='"$THREADS"' MKL_NUM_THREADS='"$THREADS"'
  exec nohup nice -n 19 .venv/bin/python -u scripts/train_codec.py "$@" >> '"$log"' 2>&1
' bash "${args[@]}" &
echo $! > "$pid"
echo "started pid $(cat "$pid"), log $log"
