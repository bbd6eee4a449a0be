"""Training the learned codec on pathology tiles (CPU or GPU), resumable, logged.

Data: crops of real H&E at native resolution from image folders (PCam, Kather: any folder of
images) and from slides (read with the slide readers at level 0). What is held out for the
benchmark (the lossless shared tiles, one slide) is simply not passed here.

Loss per sample = bits per pixel + lambda_level * distortion, with the level (and so the gain
vector and lambda) drawn at random per sample: one model for every quality.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .model import CodecConfig, CodecNet

CROP = 96


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


def load_folder_images(folder: Path, limit: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Every image under `folder` (recursively) as RGB uint8, at least CROP px per side."""
    from PIL import Image

    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
    )
    if limit is not None and len(files) > limit:
        files = random.Random(seed).sample(files, limit)
    out = []
    for f in files:
        with Image.open(f) as im:
            a = np.asarray(im.convert("RGB"))
        if min(a.shape[:2]) >= CROP:
            out.append(a)
    return out


def load_slide_level0(path: Path, max_side: int = 8192) -> np.ndarray:
    """A slide's level 0 (or its top-left max_side square) as one RGB array."""
    from ...slide import open_slide

    with open_slide(path) as r:
        w, h = r.info.dimensions
        w, h = min(w, max_side), min(h, max_side)
        return r.read_region((0, 0), 0, (w, h))


class CropSampler:
    """Random CROP x CROP crops, random flips / quarter turns, from weighted image pools.

    Crops that are almost all glass are re-drawn (up to a few times): the codec should spend
    its training on tissue, which is what containers store."""

    def __init__(self, pools: list[tuple[list[np.ndarray], float]], seed: int = 0):
        self.pools = [(imgs, w) for imgs, w in pools if imgs]
        total = sum(w for _, w in self.pools)
        self.weights = [w / total for _, w in self.pools]
        self.rng = np.random.default_rng(seed)

    def crop(self) -> np.ndarray:
        imgs = self.pools[self.rng.choice(len(self.pools), p=self.weights)][0]
        for _ in range(4):
            a = imgs[self.rng.integers(len(imgs))]
            y = self.rng.integers(0, a.shape[0] - CROP + 1)
            x = self.rng.integers(0, a.shape[1] - CROP + 1)
            c = a[y : y + CROP, x : x + CROP]
            if c.min(axis=2).mean() < 215:  # some tissue in it
                break
        c = np.rot90(c, self.rng.integers(4))
        if self.rng.integers(2):
            c = c[:, ::-1]
        return np.ascontiguousarray(c)

    def batch(self, n: int) -> torch.Tensor:
        b = np.stack([self.crop() for _ in range(n)])
        return torch.from_numpy(b).permute(0, 3, 1, 2).float().div_(255.0)


def _lr(step: int, s: TrainSettings, seconds: float = 0.0) -> float:
    """Cosine from lr to lr_final after a 200-step warm-up, over the steps or the time budget,
    whichever runs out first (on a shared CPU the step rate is not known in advance)."""
    if step < 200:
        return s.lr * (step + 1) / 200
    t = min(1.0, step / max(1, s.steps))
    if s.minutes:
        t = max(t, min(1.0, seconds / (s.minutes * 60)))
    return s.lr_final + 0.5 * (s.lr - s.lr_final) * (1 + math.cos(math.pi * t))


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


def train(
    cfg: CodecConfig,
    sampler: CropSampler,
    val: torch.Tensor,
    out_dir: Path,
    s: TrainSettings,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Train (or resume) into `out_dir`: checkpoint.pt, log.csv, config.json; returns the
    checkpoint path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if s.threads:
        torch.set_num_threads(s.threads)
    # trained weights drift into subnormal floats: measured 4x slower steps without this
    torch.set_flush_denormal(True)
    torch.manual_seed(s.seed)
    dev = torch.device(s.device)
    net = CodecNet(cfg).to(dev)
    val = val.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    ckpt = out_dir / "checkpoint.pt"
    step, best, before = 0, math.inf, 0.0
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=dev)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, best = state["step"], state.get("best", math.inf)
        before = state.get("seconds", 0.0)
        sampler.rng = np.random.default_rng(s.seed + step)
        log(f"resumed at step {step}")
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    log_path = out_dir / "log.csv"
    new_log = not log_path.exists() or not resume
    f = open(log_path, "w" if new_log else "a", newline="")
    w = csv.writer(f)
    if new_log:
        w.writerow(["step", "seconds", "lr", "loss", "bpp", "psnr", "val_loss"])
    t0 = time.perf_counter() - before  # the time budget counts earlier sessions too
    rng = np.random.default_rng(s.seed + 1 + step)
    run = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "n": 0}
    try:
        while step < s.steps:
            if s.minutes is not None and time.perf_counter() - t0 > s.minutes * 60:
                log(f"time budget reached at step {step}")
                break
            for g in opt.param_groups:
                g["lr"] = _lr(step, s, time.perf_counter() - t0)
            x = sampler.batch(s.batch).to(dev, non_blocking=True)
            level = torch.from_numpy(rng.integers(0, cfg.levels, s.batch)).to(dev)
            terms = loss_terms(net, x, level)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            step += 1
            run["loss"] += terms["loss"].item()
            run["bpp"] += terms["bpp"].mean().item()
            run["mse"] += terms["mse"].mean().item()
            run["n"] += 1
            if step % s.checkpoint_every == 0 or step == s.steps:
                v = evaluate(net, val)
                n = run["n"]
                psnr = 10 * math.log10(255**2 / max(run["mse"] / n, 1e-9))
                sec = time.perf_counter() - t0
                w.writerow([step, round(sec, 1), _lr(step, s, sec),
                            run["loss"] / n, run["bpp"] / n, psnr, v])  # fmt: skip
                f.flush()
                log(f"step {step}: loss {run['loss'] / n:.4f} bpp {run['bpp'] / n:.3f} "
                    f"psnr {psnr:.2f} val {v:.4f}")  # fmt: skip
                run = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "n": 0}
                if v < best:
                    best = v
                    torch.save({"model": net.state_dict(), "step": step, "val": v},
                               out_dir / "best.pt")  # fmt: skip
                _save(ckpt, net, opt, step, best, time.perf_counter() - t0)
    finally:
        _save(ckpt, net, opt, step, best, time.perf_counter() - t0)
        f.close()
    return ckpt


def _save(
    path: Path, net: CodecNet, opt: torch.optim.Optimizer, step: int, best: float, seconds: float
) -> None:
    tmp = path.with_suffix(".tmp")
    state = {"model": net.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
             "seconds": seconds}  # fmt: skip
    torch.save(state, tmp)
    tmp.replace(path)


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
