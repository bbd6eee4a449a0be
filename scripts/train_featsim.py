"""Retrain the feature-similarity network (metrics/featsim) on PCam and write its weights folder.

A ResNet18 of half width (stem 32 channels) learns PCam's tumour-vs-normal task on the shared
patches (96 px, 0.97 um/px), with dihedral, HED-stain, brightness/contrast and per-batch scale
jitter; the epoch with the best validation AUC is kept and written as fp16 safetensors with
config.json, log.csv and MODEL_CARD.md (the numbers filled in from this run). The trainer is
`slidepress.training.featsim`.

    python scripts/train_featsim.py -o runs/featsim --limit-per-class 5000 --epochs 6 \
        --steps-per-epoch 150 --batch 64     # the shipped run: 9.8 min on half a CPU core
    cp runs/featsim/{model.safetensors,config.json,log.csv,MODEL_CARD.md} \\
       src/slidepress/weights/featsim-resnet18/
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from slidepress.training.featsim import FeatsimSettings, train_featsim

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLIDEPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=SHARED / "patches" / "pcam")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps-per-epoch", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--max-minutes", type=float, default=80.0, help="stop after this epoch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue the run in --output")
    a = vars(ap.parse_args())
    out, resume = a.pop("output"), a.pop("resume")
    train_featsim(FeatsimSettings(**a), out, resume=resume, command=" ".join(["python", *sys.argv]),
                  log=functools.partial(print, flush=True))  # fmt: skip


if __name__ == "__main__":
    main()
