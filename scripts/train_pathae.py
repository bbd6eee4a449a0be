"""Train slidepress's own autoencoder codec (`--codec pathae`) on the shared pathology data and
export it as the shipped bundle (src/slidepress/weights/pathae-he-f8c8).

Data (as scripts/train_codec.py): PCam train patches (96 px, 0.97 um/px), the Kather 2016
sample, level 0 of CMU-1-Small-Region.svs; random 64 px crops of 96 px tissue crops, dihedral
augmentation. Held out (the benchmark's inputs): ../shared/data/tiles and CropBreastSlide.tiff.
Loss: L1 + 5 MSE on [0, 1] pixels, latents perturbed by Gaussian noise (sigma ~ U(0, NOISE))
so the decoder tolerates quantization. One thread, flush-denormal on, time budget in minutes;
Adam lr 1e-3 (warm-up, cosine), gradients clipped at norm 1; resumable (--resume). The trainer
is `slidepress.training.pathae`.
Then the export: fp16 weights + quantizers (int8 scale, K-means
codebooks for every rate level, entropy tables) fitted on latents of training crops.

    python scripts/train_pathae.py -o runs/pathae --minutes 30          # train + export
    python scripts/train_pathae.py -o runs/pathae --export-only          # re-export
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import torch

from slidepress.training.pathae import CROP, NOISE, PathAESettings, export_run, train_pathae
from slidepress.training.run import prepare_torch
from slidepress.training.samplers import he_mix

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLIDEPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT_WEIGHTS = REPO / "src" / "slidepress" / "weights" / "pathae-he-f8c8"
LOG = functools.partial(print, flush=True)


def pools(pcam_limit: int, seed: int = 0):
    """Training crop sampler and fixed validation crops (PCam valid + CMU-1), as train_codec."""
    return he_mix(SHARED, pcam_limit=pcam_limit, seed=seed, files_seed=seed, val_crops=64, log=LOG)


def train(args: argparse.Namespace) -> None:
    sampler, val = pools(args.pcam_limit, args.seed)
    s = PathAESettings(steps=args.steps, minutes=args.minutes, batch=args.batch, lr=args.lr,
                       log_every=args.log_every, seed=args.seed, threads=1)  # fmt: skip
    train_pathae(sampler, val, args.output, s, resume=args.resume, log=LOG)


def export(args: argparse.Namespace) -> None:
    prepare_torch(args.seed, threads=1)
    sampler, val = pools(min(args.pcam_limit, 4000), args.seed + 7)
    crops = torch.cat([sampler.batch(64) for _ in range(args.fit_crops // 64)])
    record = {
        "training": {
            "batch": args.batch,
            "crop": CROP,
            "lr": args.lr,
            "noise": NOISE,
            "loss": "L1 + 5 MSE (pixels in [0,1])",
            "data": "PCam train (55 %), CMU-1-Small-Region level 0 (35 %), Kather 2016 (10 %)",
            "threads": 1,
            "torch": torch.__version__,
            "command": f"python scripts/train_pathae.py -o {args.output} --minutes {args.minutes}",
        },
        "quantizer_fit": {"crops": len(crops), "crop": 96, "seed": args.seed + 7},
    }
    sha = export_run(args.output, crops, val, args.weights, record)
    print(f"exported -> {args.weights} (weights sha256 {sha[:12]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    ap.add_argument("--weights", type=Path, default=OUT_WEIGHTS, help="bundle to write")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pcam-limit", type=int, default=8000)
    ap.add_argument("--fit-crops", type=int, default=1024)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    if not args.export_only:
        train(args)
    export(args)


if __name__ == "__main__":
    main()
