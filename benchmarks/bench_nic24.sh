#!/usr/bin/env bash
# Issue 24's tables in one command: the held-out patch probe of every shipped encoder
# (bench_nic_probe.py) and the slide-level weak-label task on mosaics of PCam patches no
# encoder saw (bench_weak_label.py --pool valid; every encoder on the same slides).
#   bash benchmarks/bench_nic24.sh        (~10 min on 2 cores)
# Writes .bench/nic_probe/heldout.json and .bench/weak_label_i24/ENCODER/results.md.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../.venv/bin/python}
ENCS=(mean-rgb nic-multitask nic-simclr nic-vae nic-bigan nic-contrastive)
"$PY" bench_nic_probe.py "${ENCS[@]/#/-e}" > /dev/null
for e in "${ENCS[@]}"; do
  others=()
  for o in "${ENCS[@]}"; do [ "$o" != "$e" ] && others+=(--unseen-by "$o"); done
  "$PY" bench_weak_label.py --pool valid --encoder "$e" "${others[@]}" --floor "" \
    --slides 80 --test-slides 40 --grid 16 --folds 4 --epochs 12 --steps 12 --patience 4 \
    --bootstrap 500 --out "../.bench/weak_label_i24/$e"
done
