"""Training the learned codec (`codecs/learned`) on pathology crops (CPU or GPU).

Data: `samplers.CropSampler` crops of real H&E at native resolution. Loss per sample = bits
per pixel + lambda_level * distortion, with the level (and so the gain vector and lambda)
drawn at random per sample: one model for every quality.

Run folder: config.json (the `CodecConfig`), log.csv, curves.png, checkpoint.pt, best.pt
(`{"model", "step", "val"}`: the weights with the best validation loss, what
scripts/export_codec.py exports).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..codecs.learned.model import CodecConfig, CodecNet
from ..store.atomic import atomic_path
from .loop import Progress, Trainer, fit
from .run import Budget, Run, prepare_torch
from .samplers import CropSampler


@dataclass
class TrainSettings:
    steps: int = 20000
    batch: int = 16
    lr: float = 2e-4
    lr_final: float = 2e-5
    seed: int = 0
    minutes: float | None = None  # stop after this much wall time (saving a checkpoint)
    checkpoint_every: int = 500
    threads: int | None = None
    device: str = "cpu"  # "cuda" trains the same model ~100x faster where a GPU is lent


def learning_rate(step: int, s: TrainSettings, progress: float) -> float:
    """Cosine from lr to lr_final over the budget (`progress` in [0, 1]) after a 200-step
    warm-up."""
    if step < 200:
        return s.lr * (step + 1) / 200
    return s.lr_final + 0.5 * (s.lr - s.lr_final) * (1 + math.cos(math.pi * progress))


def loss_terms(net: CodecNet, x: torch.Tensor, level: torch.Tensor) -> dict[str, torch.Tensor]:
    out = net(x, level)
    pixels = x.shape[2] * x.shape[3]
    bpp = out["bits"] / pixels
    mse = ((out["x_hat"] - x) ** 2).flatten(1).mean(1) * 255.0**2
    lam = torch.tensor(net.cfg.lambdas, dtype=x.dtype, device=x.device)[level]
    if net.cfg.distortion == "ms-ssim":
        from pytorch_msssim import ms_ssim

        dist = 1 - ms_ssim(out["x_hat"].clamp(0, 1), x, data_range=1.0, size_average=False,
                           win_size=7)  # fmt: skip
        loss = bpp + lam * 3000.0 * dist
    else:
        loss = bpp + lam * mse  # CompressAI's scaling: lambda * 255^2 * MSE on [0, 1]
    return {"loss": loss.mean(), "bpp": bpp.detach(), "mse": mse.detach()}


@torch.no_grad()
def evaluate(net: CodecNet, val: torch.Tensor) -> float:
    """Mean loss over all levels on fixed validation crops (hard rounding, no noise)."""
    net.eval()
    total = 0.0
    for lv in range(net.cfg.levels):
        level = torch.full((len(val),), lv, dtype=torch.long, device=val.device)
        total += loss_terms(net, val, level)["loss"].item()
    net.train()
    return total / net.cfg.levels


class CodecTrainer(Trainer):
    family = "learned-codec"

    def __init__(self, cfg: CodecConfig, sampler: CropSampler, val: torch.Tensor,
                 s: TrainSettings, run: Run):  # fmt: skip
        self.cfg, self.sampler, self.s, self.run = cfg, sampler, s, run
        self.dev = torch.device(s.device)
        self.net = CodecNet(cfg).to(self.dev)
        self.val = val.to(self.dev)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=s.lr)
        self.levels = np.random.default_rng(s.seed + 1)
        self.best, self.lr = math.inf, s.lr
        self.models, self.optimizers = {"net": self.net}, {"adam": self.opt}
        self.generators = {"crops": sampler.rng, "levels": self.levels}

    def config(self) -> dict:
        return self.cfg.to_dict()

    def lr_at(self, step: int, progress: float) -> float:
        return learning_rate(step, self.s, progress)

    def step(self, step: int, progress: float) -> dict[str, float]:
        self.lr = self.lr_at(step, progress)
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        x = self.sampler.batch(self.s.batch).to(self.dev, non_blocking=True)
        level = torch.from_numpy(self.levels.integers(0, self.cfg.levels, self.s.batch))
        terms = loss_terms(self.net, x, level.to(self.dev))
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.opt.step()
        return {"loss": terms["loss"].item(), "bpp": terms["bpp"].mean().item(),
                "mse": terms["mse"].mean().item()}  # fmt: skip

    def row(self, step: int, means: dict[str, float]) -> dict[str, float]:
        v = evaluate(self.net, self.val)
        if v < self.best:
            self.best = v
            with atomic_path(self.run.path("best.pt")) as tmp:
                torch.save({"model": self.net.state_dict(), "step": step, "val": v}, tmp)
        psnr = 10 * math.log10(255**2 / max(means["mse"], 1e-9))
        return {"lr": self.lr, "loss": means["loss"], "bpp": means["bpp"], "psnr": psnr,
                "val_loss": v}  # fmt: skip

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]


def train_codec(
    cfg: CodecConfig,
    sampler: CropSampler,
    val: torch.Tensor,
    out_dir: Path,
    s: TrainSettings,
    resume: bool = False,
    *,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> Progress:
    """Train (or resume) the codec into the run folder `out_dir` (see the module docstring)."""
    run = Run(out_dir, resume=resume)
    prepare_torch(s.seed, s.threads)
    trainer = CodecTrainer(cfg, sampler, val, s, run)
    run.write_config(cfg.to_dict())
    budget = Budget(s.steps, s.minutes)
    return fit(trainer, run, budget, log_every=s.checkpoint_every, stop_after=stop_after, log=log)
