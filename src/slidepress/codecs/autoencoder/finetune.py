"""Decoder-only fine-tuning of an autoencoder codec on pathology tiles (PathAE, section 2.3).

The encoder and the quantizer stay frozen, so every tile already coded keeps its bytes and the
fine-tuned decoder simply decodes them better. The decoder learns from the quantized latents
of real crops (`CropSampler`, 96 px) with

    L1(x_hat, x) + w_p * perceptual(x_hat, x) [+ w_g * PatchGAN hinge term]

where `perceptual` compares channel-normalised feature maps of a pathology network at four
depths (stem, layer1-3): the shipped feature-similarity ResNet18 (`featsim`), or a local
resnet18 state dict file (e.g. a pathology foundation model's ResNet), as in LPIPS.

A run folder holds config.json, log.csv, checkpoint.pt (resumable exactly: weights, optimizer
states, step, data and torch RNG), results.json (before / after on fixed validation crops: L1,
PSNR, feature similarity, loss) and bundle/ (the fine-tuned bundle, usable as `weights=`).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import UsageError
from .loading import DIFFUSERS_DIR, META_FILE, PATHAE_FILE, Bundle, load_bundle

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
        from ...metrics.featsim import FeatureSimilarity

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


def _params(bundle: Bundle) -> list[nn.Parameter]:
    return [p for m in bundle.ae.decoder_modules() for p in m.parameters()]


def _freeze(bundle: Bundle) -> None:
    net = bundle.ae.net
    for p in net.parameters():
        p.requires_grad_(False)
    for p in _params(bundle):
        p.requires_grad_(True)


def evaluate(bundle: Bundle, val: torch.Tensor, zval: torch.Tensor, perc: Perceptual | None,
             w_p: float) -> dict[str, float]:  # fmt: skip
    """L1, PSNR, feature similarity (shipped network) and the L1 + perceptual loss on the
    validation crops."""
    from ...metrics.featsim import shipped

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


def finetune_decoder(
    bundle_dir: str | Path,
    sampler: Any,
    val: torch.Tensor,
    out: str | Path,
    settings: FinetuneSettings,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune the decoder of the bundle at `bundle_dir` on crops from `sampler`
    (`CropSampler`: `.batch(n)` -> (n, 3, 96, 96) in [0, 1], `.rng`); validation crops `val`.
    Writes the run folder `out` (see the module docstring); returns results.json's content."""
    out = Path(out)
    s = settings
    ck = out / "checkpoint.pt"
    if resume and not ck.is_file():
        raise UsageError(f"{out}: nothing to resume (no checkpoint.pt)")
    if not resume and out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: exists and is not empty (use --resume to continue it)")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(s.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(s.seed)
    from .loading import clear_cache

    clear_cache()  # a private copy of the network: its decoder is about to change
    bundle = load_bundle(bundle_dir)
    n_levels = len(bundle.quantizers.levels)
    if not 1 <= s.quality <= n_levels:
        raise UsageError(f"quality {s.quality} outside the bundle's levels 1-{n_levels}")
    _freeze(bundle)
    perc = Perceptual(s.perceptual) if s.perceptual != "none" and s.perceptual_weight > 0 else None
    opt = torch.optim.Adam(_params(bundle), lr=s.lr)
    disc = PatchGAN() if s.gan_weight > 0 else None
    dopt = torch.optim.Adam(disc.parameters(), lr=s.lr, betas=(0.5, 0.9)) if disc else None
    zval = quantized_latents(bundle, val, s.quality)
    step = 0
    if resume:
        st = torch.load(ck, weights_only=False)
        for m, sd in zip(bundle.ae.decoder_modules(), st["decoder"], strict=True):
            m.load_state_dict(sd)
        opt.load_state_dict(st["opt"])
        if disc is not None:
            disc.load_state_dict(st["disc"])
            dopt.load_state_dict(st["dopt"])  # type: ignore[union-attr]
        step, before = st["step"], st["before"]
        sampler.rng = st["sampler_rng"]
        torch.set_rng_state(st["torch_rng"])
    else:
        before = evaluate(bundle, val, zval, perc, s.perceptual_weight)
        config = {"bundle": str(Path(bundle_dir).resolve()), "model": bundle.name,
                  "weights_sha256": bundle.weights_sha256, "settings": asdict(s),
                  "perceptual_network": perc.name if perc else None}  # fmt: skip
        (out / "config.json").write_text(json.dumps(config, indent=1))
        with open(out / "log.csv", "w", newline="") as f:
            csv.writer(f).writerow(["step", "loss", "l1", "perceptual", "gan", "seconds"])
        log(f"before: {before}")

    def save() -> None:
        torch.save({"decoder": [m.state_dict() for m in bundle.ae.decoder_modules()],
                    "opt": opt.state_dict(), "disc": disc.state_dict() if disc else None,
                    "dopt": dopt.state_dict() if dopt else None, "step": step,
                    "before": before, "sampler_rng": sampler.rng,
                    "torch_rng": torch.get_rng_state()}, ck)  # fmt: skip

    t0 = time.perf_counter()
    losses: list[float] = []
    with open(out / "log.csv", "a", newline="") as f:
        w = csv.writer(f)
        while step < s.steps:
            x = sampler.batch(s.batch)
            zq = quantized_latents(bundle, x, s.quality)
            y = bundle.ae.decode(zq)
            l1 = (y - x).abs().mean()
            p = perc(y, x) if perc is not None else y.new_zeros(())
            g = y.new_zeros(())
            if disc is not None:
                g = -disc(y).mean()
            loss = l1 + s.perceptual_weight * p + s.gan_weight * g
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if disc is not None:  # hinge loss on real crops vs the decoder's
                d_loss = torch.relu(1 - disc(x)).mean() + torch.relu(1 + disc(y.detach())).mean()
                dopt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
                d_loss.backward()
                dopt.step()  # type: ignore[union-attr]
            step += 1
            losses.append(float(loss.detach()))
            terms = [float(t.detach()) for t in (loss, l1, p, g)]
            w.writerow([step, *(f"{t:.6f}" for t in terms), f"{time.perf_counter() - t0:.1f}"])
            if step % s.checkpoint_every == 0 or step == s.steps:
                f.flush()
                save()
                log(f"step {step}/{s.steps} loss {np.mean(losses[-s.checkpoint_every :]):.4f}")
    after = evaluate(bundle, val, zval, perc, s.perceptual_weight)
    log(f"after: {after}")
    sha = export_bundle(bundle, out / "bundle", {"finetune": {**asdict(s), "steps_run": step}})
    results = {"before": before, "after": after, "steps": step, "bundle": str(out / "bundle"),
               "weights_sha256": sha, "seconds_this_run": time.perf_counter() - t0}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1))
    from .loading import clear_cache as _clear

    _clear()  # the cached network was changed in place
    return results


def export_bundle(bundle: Bundle, dst: Path, record: dict[str, Any]) -> str:
    """The bundle with its fine-tuned decoder: same encoder and quantizers (tiles coded
    before decode with it), new weights hash, name + "-ft"."""
    from safetensors.torch import save_file

    from .loading import read_meta, weights_hash

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy2(bundle.folder / "quantizers.npz", dst / "quantizers.npz")
    meta = read_meta(bundle.folder)
    meta = {**meta, "name": f"{meta['name']}-ft", **record, "finetuned_from": {
        "name": meta["name"], "weights_sha256": bundle.weights_sha256}}  # fmt: skip
    net = bundle.ae.net
    if bundle.ae.kind == "pathae":
        save_file({k: v.detach().half().contiguous() for k, v in net.state_dict().items()},
                  str(dst / PATHAE_FILE))  # fmt: skip
        files = [dst / PATHAE_FILE]
    else:
        meta.pop("source", None)
        net.save_pretrained(str(dst / DIFFUSERS_DIR))
        from .loading import _weight_files

        files = _weight_files(dst / DIFFUSERS_DIR)
    (dst / META_FILE).write_text(json.dumps(meta, indent=1))
    return weights_hash([*files, dst / "quantizers.npz"])
