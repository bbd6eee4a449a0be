"""Copy the long codec run's state into the committed folder training_state/codec/ (issue 23).

    .venv/bin/python scripts/snapshot_codec.py [RUN=runs/codec-long] [DEST=training_state/codec]
                                               [--adam]

Writes config.json, log.csv, sessions.jsonl (one line per training session), state.pt (the
checkpoint: float32 weights, schedule position, random states, the log and the best value;
Adam's moments left out unless `--adam`, then in bfloat16), best.safetensors (the best
validation weights, fp16: what scripts/export_codec.py would ship) and SNAPSHOT.json (step,
time, learning rate, best step and value). `bash scripts/train_codec_long.sh` in a fresh clone
rebuilds runs/codec-long/ from it; without the moments it restarts them with a 200-step
learning-rate warm-up (training/codec_warmstart.py). The total is kept under 12 MB: best
weights, then the moments, are left out (and the script says so) if it would be larger.
Safe while the run is going: checkpoints are written atomically and read once.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import torch

LIMIT = 12 * 2**20
REPO = Path(__file__).resolve().parents[1]


def to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def snapshot(run: Path, adam: bool) -> dict[str, bytes]:
    from safetensors.torch import save

    data = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    opt = data["optimizers"]["adam"]
    lrs = [g["lr"] for g in opt["param_groups"]]
    state = {k: v for k, v in data.items() if k != "optimizers"}
    state["lrs"] = {"adam": lrs}
    files: dict[str, bytes] = {}
    if adam:
        moments = {i: {k: v.bfloat16() if k != "step" and v.is_floating_point() else v
                       for k, v in st.items()} for i, st in opt["state"].items()}  # fmt: skip
        with_adam = dict(
            state, optimizers={"adam": {"state": moments, "param_groups": opt["param_groups"]}}
        )
        files["state.pt"] = to_bytes(with_adam)
    else:
        files["state.pt"] = to_bytes(state)
    best_note = {}
    if (run / "best.pt").is_file():
        best = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
        files["best.safetensors"] = save({k: v.half().contiguous()
                                          for k, v in best["model"].items()})  # fmt: skip
        best_note = {"step": best.get("step"), "val": best.get("val")}
    for name in ("config.json", "log.csv", "sessions.jsonl"):
        if (run / name).is_file():
            files[name] = (run / name).read_bytes()
    total = sum(len(b) for b in files.values())
    if total > LIMIT and "best.safetensors" in files:
        total -= len(files.pop("best.safetensors"))
        best_note = {}
        print(f"best weights left out (total over {LIMIT >> 20} MB)")
    if total > LIMIT and adam:
        files["state.pt"] = to_bytes(state)
        adam = False
        print(f"Adam moments left out (total over {LIMIT >> 20} MB)")
    note = {
        "step": data["step"],
        "seconds": round(data["seconds"], 1),
        "lrs": lrs,
        "best": best_note,
        "optimizer_state": "bfloat16 moments"
        if adam
        else "left out (resume restarts Adam moments with a 200-step warm-up)",
    }
    files["SNAPSHOT.json"] = json.dumps(note, indent=1).encode()
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", type=Path, default=REPO / "runs" / "codec-long")
    ap.add_argument("dest", nargs="?", type=Path, default=REPO / "training_state" / "codec")
    ap.add_argument("--adam", action="store_true", help="keep Adam's moments (bfloat16)")
    a = ap.parse_args()
    if not (a.run / "checkpoint.pt").is_file():
        raise SystemExit(f"{a.run}: no checkpoint.pt to snapshot")
    files = snapshot(a.run, a.adam)
    total = sum(len(b) for b in files.values())
    if total > LIMIT:
        raise SystemExit(f"snapshot needs {total / 2**20:.1f} MB > {LIMIT >> 20} MB; not written")
    tmp = a.dest.with_name(a.dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, blob in files.items():
        (tmp / name).write_bytes(blob)
    shutil.rmtree(a.dest, ignore_errors=True)
    tmp.rename(a.dest)
    note = json.loads(files["SNAPSHOT.json"])
    print(f"step {note['step']}, best {note['best'] or 'left out'}, "
          f"{total / 2**20:.1f} MB -> {a.dest}")  # fmt: skip


if __name__ == "__main__":
    main()
