"""Training the feature-similarity network (`metrics/featsim`) on PCam and writing its weights
folder.

A ResNet18 of half width (stem 32 channels) learns PCam's tumour-vs-normal task (96 px,
0.97 um/px), with dihedral, HED-stain, brightness/contrast and per-batch scale jitter; the
epoch with the best validation AUC is kept and written as fp16 safetensors with config.json,
log.csv and MODEL_CARD.md (the numbers filled in from the run). Run folder: those, plus
checkpoint.pt and curves.png.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..imagefolder import list_image_folder, read_rgb
from ..metrics.featnet import DEPTHS, ResNet18
from ..metrics.featsim import FORMAT, IMAGENET_NORM
from ..metrics.stats import roc_auc
from ..store.atomic import write_text
from .augment import HEDJitter
from .loop import Progress, Trainer, fit
from .run import Budget, Run, prepare_torch


@dataclass
class FeatsimSettings:
    data: Path
    width: int = 32
    epochs: int = 12
    steps_per_epoch: int = 300
    batch: int = 64
    lr: float = 2e-3
    wd: float = 1e-4
    limit_per_class: int | None = None
    max_minutes: float = 80.0  # no epoch starts after this much training
    threads: int = 1
    seed: int = 0


def load_split(root: Path, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    files, labels, _ = list_image_folder(root, limit_per_class=limit, seed=seed)
    return np.stack([read_rgb(f) for f in files]), labels


def to_input(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)


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


def half_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 floats (BN statistics too), integers as they are; contiguous for safetensors."""
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


class FeatsimTrainer(Trainer):
    """PCam tumour vs normal; an epoch is a period (validated, the best one kept)."""

    family = "featsim"

    def __init__(self, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 s: FeatsimSettings):  # fmt: skip
        self.x, self.y = train
        self.x_val, self.y_val = val
        self.s = s
        self.period = s.steps_per_epoch
        self.model = ResNet18(s.width, num_classes=2)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=s.wd)
        total = s.epochs * s.steps_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
        )
        self.g = torch.Generator().manual_seed(s.seed)
        self.rng = np.random.default_rng(s.seed)
        self.hed = HEDJitter(sigma=0.05, bias=0.1, p=0.8)
        self.best: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.models, self.optimizers = {"model": self.model}, {"adamw": self.opt}
        self.schedulers = {"cosine": self.sched}
        self.generators = {"augment": self.g, "batches": self.rng}

    def config(self) -> dict:
        return {"architecture": "resnet18", "width": self.s.width, "classes": 2}

    def step(self, step: int, progress: float) -> dict[str, float]:
        if step % self.period == 0:
            self.model.train()
        idx = self.rng.integers(0, len(self.x), self.s.batch)
        x = normalise(augment(to_input(self.x[idx]), self.g, self.hed))
        loss = F.cross_entropy(self.model(x), torch.from_numpy(self.y[idx]))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return {"train_loss": loss.item()}

    def row(self, step: int, means: dict[str, float]) -> dict[str, Any]:
        row = {"epoch": step // self.period, **means,
               **evaluate(self.model, self.x_val, self.y_val)}  # fmt: skip
        if self.best is None or row["val_auc"] > self.best["val_auc"]:
            self.best = row
            self.best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        return row

    def state_dict(self) -> dict:
        return {"best": self.best, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_state = state["best"], state["best_state"]


def train_featsim(
    s: FeatsimSettings,
    out: Path,
    *,
    resume: bool = False,
    command: str = "",
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train into the run folder `out`, then write the weights folder's files there
    (model.safetensors of the best epoch in fp16, config.json, MODEL_CARD.md); returns the
    config. A paused run (`stop_after`) writes only its checkpoint and log."""
    run = Run(out, resume=resume)
    prepare_torch(s.seed, s.threads)
    train = load_split(s.data / "train", s.limit_per_class, s.seed)
    val = load_split(s.data / "valid", None, s.seed)
    log(f"data {train[0].shape} {val[0].shape}")
    trainer = FeatsimTrainer(train, val, s)
    budget = Budget(s.epochs * s.steps_per_epoch, s.max_minutes)
    p = fit(trainer, run, budget, log_every=s.steps_per_epoch, stop_after=stop_after, log=log)
    if p.stopped == "paused" or trainer.best_state is None or trainer.best is None:
        return {}
    from safetensors.torch import save_file

    state = half_state(trainer.best_state)
    save_file(state, str(run.path("model.safetensors")))
    shipped = ResNet18(s.width, num_classes=2)
    shipped.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    )
    fp16 = evaluate(shipped, *val)
    config = weights_config(s, out, trainer, p, fp16, command)
    run.write_config(config)
    mb = run.path("model.safetensors").stat().st_size / 1e6
    write_text(run.path("MODEL_CARD.md"), model_card(config, mb))
    log(f"done in {p.seconds / 60:.1f} min: best epoch {trainer.best['epoch']}, fp16 {fp16}")
    return config


def weights_config(s: FeatsimSettings, out: Path, trainer: FeatsimTrainer, p: Progress,
                   fp16: dict[str, float], command: str) -> dict[str, Any]:  # fmt: skip
    best = trainer.best or {}
    epochs_run = p.step // s.steps_per_epoch
    return {
        "format": FORMAT,
        "name": "featsim-resnet18",
        "version": "1",
        "architecture": "resnet18",
        "width": s.width,
        "depths": list(DEPTHS),
        "normalization": IMAGENET_NORM,
        "mpp": 0.97,
        "classes": ["normal", "tumour"],
        "data": {
            "train": {"origin": str(s.data / "train"), "n": int(len(trainer.x))},
            "val": {"origin": str(s.data / "valid"), "n": int(len(trainer.x_val))},
        },
        "settings": {
            "output": str(out),
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()},
        },  # fmt: skip
        "training": {
            "epochs_run": epochs_run,
            "steps": p.step,
            "best_epoch": best["epoch"],
            "best_val": {k: best[k] for k in ("val_loss", "val_accuracy", "val_auc")},
            "val_fp16": fp16,
            "minutes": round(p.seconds / 60, 1),
            "parameters": sum(v.numel() for v in trainer.model.parameters()),
        },
        "software": {
            "slidepress": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "command": command,
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


def model_card(config: dict[str, Any], mb: float) -> str:
    """MODEL_CARD.md of the weights folder, from its config.json."""
    s, t, w = config["settings"], config["training"], config["width"]
    best, fp16 = t["best_val"], t["val_fp16"]
    return CARD.format(
        width=w, w2=w * 2, w4=w * 4, w8=w * 8, params=t["parameters"], mb=mb,
        depths=", ".join(DEPTHS), n_train=config["data"]["train"]["n"],
        train_origin="shared/data/patches/pcam/train", n_val=config["data"]["val"]["n"],
        val_origin="shared/data/patches/pcam/valid", epochs_run=t["epochs_run"],
        steps_per_epoch=s["steps_per_epoch"], batch=s["batch"], steps=t["steps"],
        images=t["steps"] * s["batch"], lr=s["lr"], epochs=s["epochs"], wd=s["wd"],
        seed=s["seed"], minutes=t["minutes"], cpu=platform.processor() or platform.machine(),
        threads=s["threads"], torch=config["software"]["torch"], best_epoch=t["best_epoch"],
        acc=best["val_accuracy"], auc=best["val_auc"], loss=best["val_loss"],
        acc16=fp16["val_accuracy"], auc16=fp16["val_auc"], loss16=fp16["val_loss"],
    )  # fmt: skip
