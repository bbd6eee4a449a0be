"""Retrain the shipped learned codec (codecs/learned) on the shared pathology data.

Held out (never seen in training, used by benchmarks/bench_learned_codec.py): the lossless
tiles in ../shared/data/tiles and the slide CropBreastSlide.tiff (and, with `--data he-all`,
the PCam probe's held-out split).

    python scripts/train_codec.py -o runs/codec                # train (resumable; 1.45 h budget)
    python scripts/train_codec.py -o runs/codec --hours 1 --resume   # continue

Fine-tuning what ships (issue 23; `training/codec_warmstart.py`, the long background run is
scripts/train_codec_long.sh):

    python scripts/train_codec.py -o runs/ft --init-from src/slidepress/weights/codec-he-shallow \
        --data he-all --lr 2e-4 --lr-final 1e-5 [--snapshot training_state/codec]

`--init-from FOLDER` builds the float model from a shipped weights folder (its config.json
sets the architecture; --m/--synthesis/--lambdas/--distortion are ignored); `--snapshot DIR`
rebuilds the run from a committed snapshot (scripts/snapshot_codec.py) when it holds one;
`--resume` continues the run folder's checkpoint.pt either way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from slidepress.codecs.learned.model import CodecConfig
from slidepress.training.learned_codec import TrainSettings, train_codec
from slidepress.training.samplers import CROP, HE_ALL_DATA, SHARED, CropSampler, he_all, he_mix

# lambda * MSE (0-255) + bpp: ~24-38 dB on held-out H&E, the range JPEG-XL q30-95 covers there
LAMBDAS = (0.005, 0.0088, 0.0153, 0.027, 0.047, 0.082, 0.143, 0.25)


def data_pools(pcam_limit: int = 12000, seed: int = 0) -> tuple[CropSampler, torch.Tensor]:
    """The training crop sampler (PCam 55 %, CMU-1 level 0 35 %, Kather 10 %) and 96 fixed
    validation crops (PCam valid + CMU-1)."""
    return he_mix(SHARED, pcam_limit=pcam_limit, seed=seed, val_crops=96)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--hours", type=float, default=1.45, help="training time cap (0: none)")
    ap.add_argument("--steps", type=int, default=60000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-final", type=float, default=2e-5, help="end of the cosine schedule")
    ap.add_argument("--pcam-limit", type=int, default=12000)
    ap.add_argument("--distortion", default="mse", choices=["mse", "ms-ssim"])
    ap.add_argument("--lambdas", default=",".join(map(str, LAMBDAS)),
                    help="rate-distortion trade-off per quality level, low to high")  # fmt: skip
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--latent-stride", type=int, default=8, choices=[8, 16])
    ap.add_argument("--m", type=int, default=96, help="latent channels")
    ap.add_argument("--synthesis", default="64", help="hidden widths of the 2x layers")
    ap.add_argument("--checkpoint-every", type=int, default=1000)
    ap.add_argument("--data", default="he-mix", choices=["he-mix", "he-all"],
                    help="he-mix: the shipped model's mix; he-all: all shared H&E, 3 mpp, "
                    "stain jitter")  # fmt: skip
    ap.add_argument("--init-from", type=Path, metavar="FOLDER",
                    help="warm start from a shipped weights folder")  # fmt: skip
    ap.add_argument("--snapshot", type=Path, metavar="DIR",
                    help="start from this committed snapshot when it holds one")  # fmt: skip
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    if a.data == "he-all":
        sampler, val = he_all(SHARED)
    else:
        sampler, val = data_pools(a.pcam_limit)
    print(f"data loaded ({time.perf_counter() - t0:.0f} s)", flush=True)
    s = TrainSettings(steps=a.steps, batch=a.batch, lr=a.lr, lr_final=a.lr_final,
                      minutes=a.hours * 60 or None, threads=a.threads,
                      checkpoint_every=a.checkpoint_every, device=a.device)  # fmt: skip
    if a.init_from or a.snapshot:
        from slidepress.codecs.learned.weights_folder import config_of
        from slidepress.training.codec_warmstart import train_long

        if a.init_from:
            cfg = config_of(a.init_from)
        else:
            cfg = CodecConfig.from_dict(json.loads((a.snapshot / "config.json").read_text()))
        print(f"crops {CROP} px, {cfg}", flush=True)
        data = HE_ALL_DATA if a.data == "he-all" else "he_mix (the shipped model's data)"
        record = {"command": "python scripts/train_codec.py " + " ".join(sys.argv[1:]),
                  "data": data}  # fmt: skip
        train_long(cfg, sampler, val, a.output, s, resume=a.resume, init_from=a.init_from,
                   snapshot=a.snapshot, record=record,
                   log=lambda m: print(m, flush=True))  # fmt: skip
    else:
        lambdas = tuple(float(v) for v in a.lambdas.split(","))
        cfg = CodecConfig(distortion=a.distortion, lambdas=lambdas,
                          latent_stride=a.latent_stride, m=a.m,
                          synthesis=tuple(int(v) for v in a.synthesis.split(",")))  # fmt: skip
        print(f"crops {CROP} px, {cfg}")
        train_codec(cfg, sampler, val, a.output, s, resume=a.resume)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    torch.manual_seed(0)
    np.random.seed(0)
    main()
