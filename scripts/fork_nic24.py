"""Restart an issue-24 run from its best epoch at a lower learning rate (a manual step decay).

    .venv/bin/python scripts/fork_nic24.py METHOD [--lr-scale 0.1] [--runs runs/nic24]

Why: the runs halve their learning rate when the *pretext* validation loss stalls, but they are
selected on the select-split probe AUC, which can fall while the pretext loss still improves
(the contrastive run: probe 0.828 at step 2600, 0.74-0.78 by step 4800 at lr 1e-3). Going back
to the best weights with a smaller step is the usual fix.

The run folder RUNS/METHOD is moved to RUNS/../nic24-old/METHOD-<step> (kept whole), and a
snapshot is written to RUNS/METHOD.fork/METHOD/ that `python -m slidepress.training.nic.nic24
METHOD --snapshots RUNS/METHOD.fork` rebuilds (see nic24.snapshot_restore): the best weights as
the current ones, the step and log cut back to the best epoch, the learning rates times
`--lr-scale`, Adam's moments restarted; random states are the parent's latest (so the fork's
batches differ from the parent's after its best epoch). `fork` in SNAPSHOT.json and the log
line record where it came from; `scripts/train_nic24.sh METHOD` then starts it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method")
    ap.add_argument("--lr-scale", type=float, default=0.1)
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "nic24")
    a = ap.parse_args()
    run = a.runs / a.method
    data = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    period = json.loads((run / "config.json").read_text())["settings"]["steps_per_epoch"]
    best_epoch = int(data["state"]["best_row"]["epoch"])
    step = best_epoch * period
    if step >= data["step"]:
        raise SystemExit(f"{a.method}: the best epoch is the latest (step {step}); nothing to fork")
    best = load_file(str(run / "model.safetensors"))
    lrs = {k: [g["lr"] * a.lr_scale for g in o["param_groups"]]
           for k, o in data["optimizers"].items()}  # fmt: skip
    rows = [r for r in data["log"]["rows"] if r.get("step", 0) <= step]
    fork = {"from": f"{a.method} step {data['step']}", "best_step": step, "lr_scale": a.lr_scale}
    state = {k: v for k, v in data.items() if k != "optimizers"}
    state.update(models={"method": best}, lrs=lrs, step=step,
                 log={"rows": rows, "sums": {}, "count": 0},
                 state={**data["state"], "bad": 0}, fork=fork)  # fmt: skip
    old = a.runs.parent / "nic24-old" / f"{a.method}-{data['step']}"
    snap = a.runs / f"{a.method}.fork" / a.method
    snap.mkdir(parents=True, exist_ok=False)
    buf = io.BytesIO()
    torch.save(state, buf)
    (snap / "state.pt").write_bytes(buf.getvalue())
    shutil.copy(run / "model.safetensors", snap / "best.safetensors")
    shutil.copy(run / "config.json", snap / "config.json")
    with open(run / "log.csv", newline="") as f:
        reader = csv.DictReader(f)
        kept = [r for r in reader if int(r["step"]) <= step]
        fields = reader.fieldnames or []
    with open(snap / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(kept)
    (snap / "SNAPSHOT.json").write_text(json.dumps({"step": step, "lrs": lrs, "fork": fork}))
    old.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run), str(old))
    print(f"{a.method}: forked at step {step} (lr x{a.lr_scale}); parent kept in {old}")
    print(f"start it: .venv/bin/python -m slidepress.training.nic.nic24 {a.method} "
          f"--snapshots {snap.parent}   (or SNAPS={snap.parent} bash scripts/train_nic24.sh "
          f"{a.method})")  # fmt: skip


if __name__ == "__main__":
    main()
