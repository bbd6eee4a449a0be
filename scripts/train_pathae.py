"""Train slidepress's own autoencoder codec (`--codec pathae`) on the shared pathology data and
export it as the shipped bundle (src/slidepress/weights/pathae-he-f8c8).

Data (as scripts/train_codec.py): PCam train patches (96 px, 0.97 um/px), the Kather 2016
sample, level 0 of CMU-1-Small-Region.svs; random 64 px crops of 96 px tissue crops, dihedral
augmentation. Held out (the benchmark's inputs): ../shared/data/tiles and CropBreastSlide.tiff.
Loss: L1 + 5 MSE on [0, 1] pixels, latents perturbed by Gaussian noise (sigma ~ U(0, NOISE))
so the decoder tolerates quantization. One thread, flush-denormal on, time budget in minutes;
Adam lr 1e-3 (warm-up, cosine), gradients clipped at norm 1; resumable (--resume).
Then the export: fp16 weights + quantizers (int8 scale, K-means
codebooks for every rate level, entropy tables) fitted on latents of training crops.

    python scripts/train_pathae.py -o runs/pathae --minutes 30          # train + export
    python scripts/train_pathae.py -o runs/pathae --export-only          # re-export
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLIDEPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT_WEIGHTS = REPO / "src" / "slidepress" / "weights" / "pathae-he-f8c8"
CROP = 64
NOISE = 0.1


def pools(pcam_limit: int, seed: int = 0):
    """Training crop sampler and fixed validation crops (PCam valid + CMU-1), as train_codec."""
    from slidepress.codecs.learned.train import CropSampler, load_folder_images, load_slide_level0

    pcam = load_folder_images(SHARED / "patches" / "pcam" / "train", pcam_limit, seed)
    kather = load_folder_images(SHARED / "patches" / "kather2016")
    slide = [load_slide_level0(SHARED / "slides" / "CMU-1-Small-Region.svs")]
    print(f"data: {len(pcam)} PCam, {len(kather)} Kather, CMU-1 level 0 {slide[0].shape}",
          flush=True)  # fmt: skip
    sampler = CropSampler([(pcam, 0.55), (slide, 0.35), (kather, 0.10)], seed=seed)
    vs = CropSampler([(load_folder_images(SHARED / "patches" / "pcam" / "valid", 64, 1), 0.5),
                      (slide, 0.5)], seed=123)  # fmt: skip
    return sampler, vs.batch(64)


def sub_crop(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    y0, x0 = rng.integers(0, x.shape[2] - CROP + 1, 2)
    return x[:, :, y0 : y0 + CROP, x0 : x0 + CROP].contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(0, 1) - b) ** 2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def train(args: argparse.Namespace) -> None:
    from slidepress.codecs.autoencoder.model import AEConfig, PathAENet

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    sampler, val = pools(args.pcam_limit, args.seed)
    cfg = AEConfig()
    net = PathAENet(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    step, seconds = 0, 0.0
    ck = out / "checkpoint.pt"
    if args.resume and ck.is_file():
        st = torch.load(ck, weights_only=False)
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, seconds = st["step"], st["seconds"]
        sampler.rng = st["sampler_rng"]
        torch.set_rng_state(st["torch_rng"])
    rng = np.random.default_rng(args.seed + step)
    log_path = out / "log.csv"
    new_log = not log_path.exists() or not args.resume
    logf = open(log_path, "w" if new_log else "a", newline="")
    w = csv.writer(logf)
    if new_log:
        w.writerow(["step", "seconds", "lr", "train_loss", "val_psnr"])
    budget = args.minutes * 60
    t_start = time.perf_counter() - seconds
    run_loss = []
    while step < args.steps and (time.perf_counter() - t_start) < budget:
        t = min(1.0, (time.perf_counter() - t_start) / budget)
        lr = (
            args.lr * min(1.0, (step + 1) / 200) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        x = sub_crop(sampler.batch(args.batch), rng)
        sigma = torch.rand(x.shape[0], 1, 1, 1) * NOISE
        z = net.encode(x)
        y = net.decode(z + sigma * torch.randn_like(z))
        loss = (y - x).abs().mean() + 5 * ((y - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        run_loss.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            net.eval()
            with torch.no_grad():
                vp = psnr(net(val)[0], val)
            net.train()
            el = time.perf_counter() - t_start
            w.writerow([step, round(el, 1), f"{lr:.2e}", f"{np.mean(run_loss):.5f}", f"{vp:.3f}"])
            logf.flush()
            print(f"step {step} {el:.0f}s lr {lr:.1e} loss {np.mean(run_loss):.4f} "
                  f"val PSNR {vp:.2f}", flush=True)  # fmt: skip
            run_loss = []
            torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step,
                        "seconds": el, "sampler_rng": sampler.rng, "cfg": cfg.to_dict(),
                        "torch_rng": torch.get_rng_state()}, ck)  # fmt: skip
    el = time.perf_counter() - t_start
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step, "seconds": el,
                "sampler_rng": sampler.rng, "cfg": cfg.to_dict(),
                "torch_rng": torch.get_rng_state()}, ck)  # fmt: skip
    logf.close()
    print(f"trained {step} steps in {el / 60:.1f} min", flush=True)


def export(args: argparse.Namespace) -> None:
    from slidepress.codecs.autoencoder.loading import export_pathae

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    st = torch.load(args.output / "checkpoint.pt", weights_only=False)
    sampler, val = pools(min(args.pcam_limit, 4000), args.seed + 7)
    crops = torch.cat([sampler.batch(64) for _ in range(args.fit_crops // 64)])
    record = {
        "training": {
            "steps": st["step"],
            "minutes": round(st["seconds"] / 60, 1),
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
    sha = export_pathae(st["model"], st["cfg"], crops, val, args.weights, record)
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
