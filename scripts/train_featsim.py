"""Retrain the feature-similarity network (metrics/featsim) on PCam and write its weights folder.

A ResNet18 of half width (stem 32 channels) learns PCam's tumour-vs-normal task on the shared
patches (96 px, 0.97 um/px), with dihedral, HED-stain, brightness/contrast and per-batch scale
jitter; the epoch with the best validation AUC is kept and written as fp16 safetensors with
config.json, log.csv and MODEL_CARD.md (the numbers filled in from this run).

    python scripts/train_featsim.py -o runs/featsim --limit-per-class 5000 --epochs 6 \
        --steps-per-epoch 150 --batch 64     # the shipped run: 9.8 min on half a CPU core
    cp runs/featsim/{model.safetensors,config.json,log.csv,MODEL_CARD.md} \\
       src/slidepress/weights/featsim-resnet18/
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slidepress import __version__
from slidepress.imagefolder import list_image_folder, read_rgb
from slidepress.metrics.featnet import DEPTHS, ResNet18
from slidepress.metrics.featsim import FORMAT, IMAGENET_NORM
from slidepress.metrics.stats import roc_auc
from slidepress.train.augment import HEDJitter

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLIDEPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_split(root: Path, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    files, labels, _ = list_image_folder(root, limit_per_class=limit, seed=seed)
    images = np.stack([read_rgb(f) for f in files])
    return images, labels


def to_input(batch: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    return x


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_NORM["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORM["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, g: torch.Generator, hed: HEDJitter) -> torch.Tensor:
    """Per-sample dihedral symmetry, stain and brightness/contrast jitter; per-batch scale
    (0.8-1.33x: the metric is applied to tiles at 0.25-1 um/px, PCam is 0.97)."""
    n = x.shape[0]
    k = torch.randint(0, 8, (n,), generator=g)
    x = torch.stack(
        [
            torch.rot90(xi.flip(-1) if ki >= 4 else xi, int(ki) % 4, (1, 2))
            for xi, ki in zip(x, k, strict=False)
        ]
    )
    x = hed(x)
    b = (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.2
    c = 1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.3
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - m) * c + m + b).clamp(0, 1)
    side = int(x.shape[-1] * float(0.8 + torch.rand(1, generator=g) * 0.53)) // 8 * 8
    if side != x.shape[-1]:
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
    return x


@torch.no_grad()
def evaluate(model: ResNet18, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    model.eval()
    probs, losses = [], []
    for i in range(0, len(images), 250):
        logits = model(normalise(to_input(images[i : i + 250])))
        y = torch.from_numpy(labels[i : i + 250])
        losses.append(float(F.cross_entropy(logits, y, reduction="sum")))
        probs.append(logits.softmax(1)[:, 1].numpy())
    p = np.concatenate(probs)
    return {
        "val_loss": sum(losses) / len(images),
        "val_accuracy": float(((p > 0.5) == labels).mean()),
        "val_auc": roc_auc(labels, p),
    }


def half_state(model: ResNet18) -> dict[str, torch.Tensor]:
    """fp16 floats (BN statistics too), integers as they are; contiguous for safetensors."""
    return {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }


CARD = """# featsim-resnet18: the network behind slidepress's feature-similarity metric

A ResNet18 (torchvision's layout and layer names) at **half width** (stem {width} channels,
stages {width}/{w2}/{w4}/{w8}; {params:,} parameters, {mb:.1f} MB as fp16 safetensors), trained
in this project on PatchCamelyon (tumour vs normal lymph-node patches). Used by
`slidepress.metrics.featsim` (`FeatureSimilarity.load()`): cosine similarity of original vs
decoded tiles' features at six depths ({depths}). It is a feature extractor for a distortion
metric, not a diagnostic model.

## Why half width
Trained on a 2-core CPU shared with other jobs (1 torch thread, `nice -n 19`): half width is
~3.5x faster to train (more epochs in the time available) and ~4x cheaper to score, which
matters when `compress` scores every stored tile; 5.6 MB instead of 22 MB in the repository.
Full-width torchvision/timm `resnet18` weights from a local file load as well
(`FeatureSimilarity.load("resnet18.pth")`).

## Data
- Train: {n_train} PCam patches ({train_origin}), 96 px at 0.97 um/px, classes balanced.
- Validation: {n_val} PCam patches ({val_origin}), never trained on.
- Not used: the lossless tiles in `../shared/data/tiles` and the slides (the metric's tests
  and benchmarks run on those).

## Training
- {epochs_run} epochs x {steps_per_epoch} steps of batch {batch} ({steps} steps,
  {images:,} augmented patches), AdamW lr {lr} (cosine to 0 over {epochs} planned epochs),
  weight decay {wd}, seed {seed}.
- Augmentation: the 8 dihedral symmetries, HED stain jitter, brightness/contrast jitter,
  per-batch rescale 0.8-1.33x (the metric sees tiles at other resolutions than PCam's).
- Input: RGB / 255, normalised with ImageNet's mean and std.
- Wall time {minutes:.1f} min on {cpu} ({threads} torch thread, nice 19, next to another
  training job), torch {torch}.
- Kept: epoch {best_epoch} (best validation AUC).

## Results (PCam validation, {n_val} patches)
| weights | accuracy | ROC AUC | loss |
|---|---|---|---|
| fp32 (best epoch) | {acc:.4f} | {auc:.4f} | {loss:.4f} |
| fp16 as shipped | {acc16:.4f} | {auc16:.4f} | {loss16:.4f} |

Per-epoch numbers: `log.csv`. Retrain: `scripts/train_featsim.py` (its docstring).

## Limits
Trained on one lymph-node dataset at 10x; features of other tissues and magnifications are
used as they come. Similarity values depend on the weights: compare codecs with the same
weights (the benchmark records their hash).
"""


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
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = a.output
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    x_train, y_train = load_split(a.data / "train", a.limit_per_class, a.seed)
    x_val, y_val = load_split(a.data / "valid", None, a.seed)
    print(f"data {x_train.shape} {x_val.shape} in {time.time() - t0:.0f} s", flush=True)

    model = ResNet18(a.width, num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.wd)
    total = a.epochs * a.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    g = torch.Generator().manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    hed = HEDJitter(sigma=0.05, bias=0.1, p=0.8)
    log: list[dict] = []
    best: dict | None = None
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in range(1, a.epochs + 1):
        model.train()
        losses = []
        for _ in range(a.steps_per_epoch):
            idx = rng.integers(0, len(x_train), a.batch)
            x = normalise(augment(to_input(x_train[idx]), g, hed))
            loss = F.cross_entropy(model(x), torch.from_numpy(y_train[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            **evaluate(model, x_val, y_val),
        }
        row["minutes"] = (time.time() - t0) / 60
        log.append(row)
        print(json.dumps(row), flush=True)
        if best is None or row["val_auc"] > best["val_auc"]:
            best = row
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if row["minutes"] > a.max_minutes:
            break
    assert best is not None and best_state is not None
    minutes = (time.time() - t0) / 60
    model.load_state_dict(best_state)
    state = half_state(model)
    from safetensors.torch import save_file

    save_file(state, str(out / "model.safetensors"))
    shipped = ResNet18(a.width, num_classes=2)
    shipped.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    )
    fp16 = evaluate(shipped, x_val, y_val)
    with open(out / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(log[0]))
        w.writeheader()
        w.writerows(log)
    params = sum(p.numel() for p in model.parameters())
    config = {
        "format": FORMAT,
        "name": "featsim-resnet18",
        "version": "1",
        "architecture": "resnet18",
        "width": a.width,
        "depths": list(DEPTHS),
        "normalization": IMAGENET_NORM,
        "mpp": 0.97,
        "classes": ["normal", "tumour"],
        "data": {
            "train": {"origin": str(a.data / "train"), "n": int(len(x_train))},
            "val": {"origin": str(a.data / "valid"), "n": int(len(x_val))},
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "training": {
            "epochs_run": len(log),
            "steps": len(log) * a.steps_per_epoch,
            "best_epoch": best["epoch"],
            "best_val": {k: best[k] for k in ("val_loss", "val_accuracy", "val_auc")},
            "val_fp16": fp16,
            "minutes": round(minutes, 1),
            "parameters": params,
        },
        "software": {
            "slidepress": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "command": " ".join(["python", *sys.argv]),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    w = a.width
    card = CARD.format(
        width=w, w2=w * 2, w4=w * 4, w8=w * 8, params=params,
        mb=(out / "model.safetensors").stat().st_size / 1e6, depths=", ".join(DEPTHS),
        n_train=len(x_train), train_origin="shared/data/patches/pcam/train", n_val=len(x_val),
        val_origin="shared/data/patches/pcam/valid", epochs_run=len(log),
        steps_per_epoch=a.steps_per_epoch, batch=a.batch, steps=len(log) * a.steps_per_epoch,
        images=len(log) * a.steps_per_epoch * a.batch, lr=a.lr, epochs=a.epochs, wd=a.wd,
        seed=a.seed, minutes=minutes, cpu=platform.processor() or platform.machine(),
        threads=a.threads, torch=torch.__version__, best_epoch=best["epoch"],
        acc=best["val_accuracy"], auc=best["val_auc"], loss=best["val_loss"],
        acc16=fp16["val_accuracy"], auc16=fp16["val_auc"], loss16=fp16["val_loss"],
    )  # fmt: skip
    (out / "MODEL_CARD.md").write_text(card)
    print(f"done in {minutes:.1f} min: best epoch {best['epoch']}, fp16 {fp16}", flush=True)


if __name__ == "__main__":
    main()
