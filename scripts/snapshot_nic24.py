"""Copy the issue-24 runs' state into the committed folder training_state/nic24/<method>/.

    .venv/bin/python scripts/snapshot_nic24.py [RUNS=runs/nic24] [DEST=training_state/nic24]

Per method: config.json, log.csv, state.pt (the checkpoint with fp16 weights, schedules,
random states, the log and the trainer's best/patience; Adam's moments left out to stay
small, so a resume from it is approximate: `scripts/train_nic24.sh` restarts them at the
saved learning rate) and best.safetensors (the best epoch's weights, fp16). The committed total
is kept under 40 MB: if it would be larger, best weights are left out, largest first (a resume
then treats the current weights as the best so far), and the script says so. Safe while runs
are going: checkpoints are written atomically and read once.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import torch

LIMIT = 40 * 2**20
REPO = Path(__file__).resolve().parents[1]


def half(state: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def snapshot(run: Path) -> dict[str, bytes]:
    data = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    lrs = {k: [g["lr"] for g in o["param_groups"]] for k, o in data["optimizers"].items()}
    state = {k: v for k, v in data.items() if k != "optimizers"}
    state["models"] = {k: half(m) for k, m in data["models"].items()}
    if "ema" in state.get("state", {}):  # the trainer's weight average: left out like Adam's
        # moments (a run with `ema` restarts its average from the weights), to stay small
        state["state"] = {k: v for k, v in state["state"].items() if k != "ema"}
    state["lrs"] = lrs
    buf = io.BytesIO()
    torch.save(state, buf)
    files = {"state.pt": buf.getvalue()}
    if (run / "model.safetensors").is_file():
        from safetensors.torch import load_file, save

        files["best.safetensors"] = save(half(load_file(str(run / "model.safetensors"))))
    for name in ("config.json", "log.csv"):
        if (run / name).is_file():
            files[name] = (run / name).read_bytes()
    note = {
        "step": data["step"],
        "seconds": round(data["seconds"], 1),
        "lrs": lrs,
        "optimizer_state": "left out (resume restarts Adam moments)",
    }
    files["SNAPSHOT.json"] = json.dumps(note, indent=1).encode()
    return files


def main() -> None:
    runs = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "runs" / "nic24"
    dest = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "training_state" / "nic24"
    snaps = {r.name: snapshot(r) for r in sorted(runs.iterdir())
             if (r / "checkpoint.pt").is_file()}  # fmt: skip
    total = sum(len(b) for f in snaps.values() for b in f.values())
    for method, files in sorted(snaps.items(), key=lambda kv: -len(kv[1].get("best.safetensors",
                                                                           b""))):  # fmt: skip
        if total <= LIMIT:
            break
        if "best.safetensors" in files:
            total -= len(files.pop("best.safetensors"))
            print(f"{method}: best weights left out (total over {LIMIT >> 20} MB)")
    if total > LIMIT:
        raise SystemExit(f"snapshots need {total / 2**20:.1f} MB > {LIMIT >> 20} MB; not written")
    for method, files in snaps.items():
        out = dest / method
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        size = sum(len(b) for b in files.values()) / 2**20
        print(
            f"{method}: step {json.loads(files['SNAPSHOT.json'])['step']}, {size:.1f} MB -> {out}"
        )
    print(f"total {total / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
