"""Decoder-only fine-tuning of an autoencoder codec on pathology tiles (PathAE, section 2.3).

The encoder and the quantizer stay frozen, so every tile already coded keeps its bytes and the
fine-tuned decoder simply decodes them better. The decoder learns from the quantized latents
of real crops (`samplers.CropSampler`, 96 px) with

    L1(x_hat, x) + w_p * perceptual(x_hat, x) [+ w_g * PatchGAN hinge term]

where `perceptual` compares channel-normalised feature maps of a pathology network at four
depths (stem, layer1-3): the shipped feature-similarity ResNet18 (`featsim`), or a local
resnet18 state dict file (e.g. a pathology foundation model's ResNet), as in LPIPS.

Run folder: config.json, log.csv (a row per step), curves.png, checkpoint.pt, results.json
(before / after on fixed validation crops: L1, PSNR, feature similarity, loss) and bundle/
(the fine-tuned bundle, usable as `weights=`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..codecs.autoencoder.export import export_bundle
from ..codecs.autoencoder.loading import Bundle, clear_cache, load_bundle
from ..errors import UsageError
from ..store.atomic import write_json
from .loop import Trainer, fit
from .run import Budget, Run, prepare_torch
from .samplers import CropSampler

PERCEPTUAL_TAPS = 4  # stem, layer1, layer2, layer3


@dataclass
class FinetuneSettings:
    """Knobs of one fine-tuning run (saved in config.json)."""

    steps: int = 300
    batch: int = 8
    lr: float = 1e-4
    quality: int = 4  # the rate level whose quantized latents the decoder learns from
    perceptual: str = "featsim"  # "featsim", "none" or a resnet18 state-dict file
    perceptual_weight: float = 0.5
    gan_weight: float = 0.0  # > 0 adds a PatchGAN discriminator
    checkpoint_every: int = 50
    val_crops: int = 32
    seed: int = 0
    threads: int = 1


class PatchGAN(nn.Module):
    """A small PatchGAN discriminator (Isola et al. 2017): one real/fake logit per patch."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, 1, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


class Perceptual(nn.Module):
    """LPIPS-style distance on a frozen pathology ResNet18's feature maps."""

    def __init__(self, spec: str):
        super().__init__()
        from ..metrics.featsim import FeatureSimilarity

        fs = FeatureSimilarity.load(None if spec == "featsim" else spec, device="cpu")
        self.net = fs.model.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(fs.normalization["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(fs.normalization["std"]).view(1, 3, 1, 1))
        self.name = f"{fs.name}@{fs.weights_hash[:12]}"

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self.net.taps((a - self.mean) / self.std)[:PERCEPTUAL_TAPS]
        fb = self.net.taps((b - self.mean) / self.std)[:PERCEPTUAL_TAPS]
        out = a.new_zeros(())
        for x, y in zip(fa, fb, strict=True):
            x = x / (x.norm(dim=1, keepdim=True) + 1e-6)
            y = y / (y.norm(dim=1, keepdim=True) + 1e-6)
            out = out + ((x - y) ** 2).sum(1).mean()
        return out


def quantized_latents(bundle: Bundle, x: torch.Tensor, quality: int) -> torch.Tensor:
    """Frozen encoder + frozen quantizer: what the decoder sees for crops x at `quality`."""
    q = bundle.quantizers
    level = q.levels[quality - 1]
    with torch.no_grad():
        z = bundle.ae.encode(x).float().numpy()
    if level == "float16":
        zq = z.astype(np.float16).astype(np.float32)
    elif level == "int8":
        zq = q.int8.dequantize(q.int8.quantize(z))
    else:
        km = q.kmeans[q.levels.index(level)]
        zq = km.dequantize(km.quantize(z))
    return torch.from_numpy(np.ascontiguousarray(zq, np.float32))


def evaluate(bundle: Bundle, val: torch.Tensor, zval: torch.Tensor, perc: Perceptual | None,
             w_p: float) -> dict[str, float]:  # fmt: skip
    """L1, PSNR, feature similarity (shipped network) and the L1 + perceptual loss on the
    validation crops."""
    from ..metrics.featsim import shipped

    with torch.no_grad():
        y = bundle.ae.decode(zval).clamp(0, 1)
        l1 = float((y - val).abs().mean())
        mse = float(((y * 255).round() / 255 - val).pow(2).mean())
        p = float(perc(y, val)) if perc is not None else 0.0
    a = (val.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    b = (y.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    fs = float(shipped("cpu").score(a, b).mean.mean())
    return {"l1": l1, "psnr": 10 * math.log10(1 / max(mse, 1e-12)), "featsim_mean": fs,
            "perceptual": p, "loss": l1 + w_p * p}  # fmt: skip


class DecoderTrainer(Trainer):
    """The bundle's decoder (and a PatchGAN when `gan_weight` > 0); the rest frozen."""

    family = "ae-decoder"

    def __init__(self, bundle: Bundle, sampler: CropSampler, s: FinetuneSettings):
        self.bundle, self.sampler, self.s = bundle, sampler, s
        self.decoder = nn.ModuleList(bundle.ae.decoder_modules())
        for p in bundle.ae.net.parameters():
            p.requires_grad_(False)
        for p in self.decoder.parameters():
            p.requires_grad_(True)
        use_perc = s.perceptual != "none" and s.perceptual_weight > 0
        self.perc = Perceptual(s.perceptual) if use_perc else None
        self.opt = torch.optim.Adam(self.decoder.parameters(), lr=s.lr)
        self.disc = PatchGAN() if s.gan_weight > 0 else None
        self.dopt = (
            torch.optim.Adam(self.disc.parameters(), lr=s.lr, betas=(0.5, 0.9))
            if self.disc is not None
            else None
        )
        self.before: dict[str, float] = {}
        gan = self.disc is not None and self.dopt is not None
        self.models = {"decoder": self.decoder, **({"disc": self.disc} if gan else {})}
        self.optimizers = {"decoder": self.opt, **({"disc": self.dopt} if gan else {})}
        self.generators = {"crops": sampler.rng}

    def config(self) -> dict:
        s = self.s
        return {"weights_sha256": self.bundle.weights_sha256, "quality": s.quality,
                "perceptual": s.perceptual, "gan": self.disc is not None}  # fmt: skip

    def step(self, step: int, progress: float) -> dict[str, float]:
        s, ae = self.s, self.bundle.ae
        x = self.sampler.batch(s.batch)
        y = ae.decode(quantized_latents(self.bundle, x, s.quality))
        l1 = (y - x).abs().mean()
        p = self.perc(y, x) if self.perc is not None else y.new_zeros(())
        g = -self.disc(y).mean() if self.disc is not None else y.new_zeros(())
        loss = l1 + s.perceptual_weight * p + s.gan_weight * g
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.disc is not None and self.dopt is not None:  # hinge loss, real vs decoded
            d_loss = (
                torch.relu(1 - self.disc(x)).mean() + torch.relu(1 + self.disc(y.detach())).mean()
            )
            self.dopt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.dopt.step()
        return {"loss": float(loss.detach()), "l1": float(l1.detach()),
                "perceptual": float(p.detach()), "gan": float(g.detach())}  # fmt: skip

    def state_dict(self) -> dict:
        return {"before": self.before}

    def load_state_dict(self, state: dict) -> None:
        self.before = state["before"]


def finetune_decoder(
    bundle_dir: str | Path,
    sampler: CropSampler,
    val: torch.Tensor,
    out: str | Path,
    settings: FinetuneSettings,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune the decoder of the bundle at `bundle_dir` on crops from `sampler`; validation
    crops `val`. Writes the run folder `out` (see the module docstring); returns results.json's
    content."""
    s = settings
    run = Run(out, resume=resume)
    prepare_torch(s.seed, s.threads)
    clear_cache()  # a private copy of the network: its decoder is about to change
    bundle = load_bundle(bundle_dir)
    n_levels = len(bundle.quantizers.levels)
    if not 1 <= s.quality <= n_levels:
        raise UsageError(f"quality {s.quality} outside the bundle's levels 1-{n_levels}")
    trainer = DecoderTrainer(bundle, sampler, s)
    zval = quantized_latents(bundle, val, s.quality)
    if not resume:
        trainer.before = evaluate(bundle, val, zval, trainer.perc, s.perceptual_weight)
        perc = trainer.perc.name if trainer.perc else None
        run.write_config({"bundle": str(Path(bundle_dir).resolve()), "model": bundle.name,
                          "weights_sha256": bundle.weights_sha256, "settings": asdict(s),
                          "perceptual_network": perc})  # fmt: skip
        log(f"before: {trainer.before}")
    t0 = time.perf_counter()
    p = fit(trainer, run, Budget(s.steps), checkpoint_every=s.checkpoint_every,
            stop_after=stop_after, log=log)  # fmt: skip
    after = evaluate(bundle, val, zval, trainer.perc, s.perceptual_weight)
    log(f"after: {after}")
    sha = export_bundle(
        bundle, run.path("bundle"), {"finetune": {**asdict(s), "steps_run": p.step}}
    )
    results = {"before": trainer.before, "after": after, "steps": p.step,
               "bundle": str(run.path("bundle")), "weights_sha256": sha,
               "seconds_this_run": time.perf_counter() - t0}  # fmt: skip
    write_json(run.path("results.json"), results)
    clear_cache()  # the cached network was changed in place
    return results
