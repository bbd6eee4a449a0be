"""Training slidepress's own autoencoder codec (`--codec pathae`, `codecs/autoencoder/model.py`)
and exporting it as a bundle.

Random 64 px crops of 96 px tissue crops (`samplers.CropSampler`: dihedral augmentation).
Loss: L1 + 5 MSE on [0, 1] pixels, latents perturbed by Gaussian noise (sigma ~ U(0, NOISE))
so the decoder tolerates quantization. Adam, lr warm-up then cosine over the budget (steps or
minutes, whichever runs out first), gradients clipped at norm 1.

Run folder: log.csv (step, seconds, lr, train_loss, val_psnr), curves.png, checkpoint.pt
(its "config" is the `AEConfig`; `export_run` reads it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..codecs.autoencoder.model import AEConfig, PathAENet
from .checkpoint import load_checkpoint
from .loop import Progress, Trainer, fit
from .run import Budget, Run, prepare_torch
from .samplers import CropSampler

CROP = 64
NOISE = 0.1


@dataclass
class PathAESettings:
    steps: int = 1_000_000
    minutes: float | None = 30
    batch: int = 16
    lr: float = 1e-3
    log_every: int = 250
    seed: int = 0
    threads: int = 1


def sub_crop(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    y0, x0 = rng.integers(0, x.shape[2] - CROP + 1, 2)
    return x[:, :, y0 : y0 + CROP, x0 : x0 + CROP].contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(0, 1) - b) ** 2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


class PathAETrainer(Trainer):
    family = "pathae"

    def __init__(self, sampler: CropSampler, val: torch.Tensor, s: PathAESettings,
                 arch: AEConfig | None = None):  # fmt: skip
        self.sampler, self.val, self.s = sampler, val, s
        self.arch = arch or AEConfig()
        self.net = PathAENet(self.arch)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=s.lr)
        self.crops = np.random.default_rng(s.seed)
        self.lr = s.lr
        self.models, self.optimizers = {"net": self.net}, {"adam": self.opt}
        self.generators = {"sampler": sampler.rng, "sub_crops": self.crops}

    def config(self) -> dict:
        return self.arch.to_dict()

    def step(self, step: int, progress: float) -> dict[str, float]:
        cosine = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))
        self.lr = self.s.lr * min(1.0, (step + 1) / 200) * cosine
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        x = sub_crop(self.sampler.batch(self.s.batch), self.crops)
        sigma = torch.rand(x.shape[0], 1, 1, 1) * NOISE
        z = self.net.encode(x)
        y = self.net.decode(z + sigma * torch.randn_like(z))
        loss = (y - x).abs().mean() + 5 * ((y - x) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        return {"train_loss": loss.item()}

    def row(self, step: int, means: dict[str, float]) -> dict[str, float]:
        self.net.eval()
        with torch.no_grad():
            vp = psnr(self.net(self.val)[0], self.val)
        self.net.train()
        return {"lr": self.lr, **means, "val_psnr": vp}


def train_pathae(sampler: CropSampler, val: torch.Tensor, out: Path, s: PathAESettings, *,
                 resume: bool = False, arch: AEConfig | None = None, stop_after: int | None = None,
                 log: Callable[[str], None] = print) -> Progress:  # fmt: skip
    """Train (or resume) into the run folder `out`."""
    run = Run(out, resume=resume)
    prepare_torch(s.seed, s.threads)
    trainer = PathAETrainer(sampler, val, s, arch)
    budget = Budget(s.steps, s.minutes)
    p = fit(trainer, run, budget, log_every=s.log_every, stop_after=stop_after, log=log)
    log(f"trained {p.step} steps in {p.seconds / 60:.1f} min")
    return p


def export_run(run_dir: Path, crops: torch.Tensor, val: torch.Tensor, weights: Path,
               record: dict[str, Any]) -> str:  # fmt: skip
    """The run's last weights -> a bundle at `weights` (quantizers fitted on `crops`, levels
    measured on `val`); `record["training"]` gains the steps and minutes. Returns its hash."""
    from ..codecs.autoencoder.loading import export_pathae

    ck = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    record = {**record, "training": {"steps": ck["step"],
                                     "minutes": round(ck["seconds"] / 60, 1),
                                     **record.get("training", {})}}  # fmt: skip
    return export_pathae(ck["models"]["net"], ck["config"], crops, val, weights, record)
