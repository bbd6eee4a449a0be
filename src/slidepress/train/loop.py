"""The generic encoder-training loop: validation, plateau LR decay, early stopping, best and
last checkpoints, exact resume, CSV log, curves and preview PNGs, seeded determinism.

Run folder: config.json + model.safetensors (best weights: what `nic:DIR` loads),
checkpoint.pt (last epoch, for --resume), log.csv, curves.png, preview.png (VAE/BiGAN).
"""

from __future__ import annotations

import platform
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..encoders.nic import NORMALIZATION, NICConfig, NICMethod, build_method
from ..errors import UsageError
from ..progress import Advance
from ..store.atomic import atomic_path, save_figure, write_csv, write_json
from ..viz import save_patch_rows
from .feeds import Feed

FORMAT = "slidepress-nic-encoder/1"


@dataclass
class TrainSettings:
    epochs: int = 10
    batch_size: int = 64
    steps_per_epoch: int | None = None  # None: one pass over the largest training set
    patience: int = 4  # epochs without validation improvement before stopping
    lr_patience: int = 1  # epochs without improvement before halving the LR
    seed: int = 0
    device: str | None = None


def to_device(batch: Any, device: str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _mean_logs(rows: list[dict]) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    for r in rows:
        for k, v in r.items():
            sums[k] += float(v)
    return {k: v / len(rows) for k, v in sums.items()}


def save_weights(method: NICMethod, path: Path, fp16: bool = False) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()}
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "method": method.name})


def run_config(method: NICMethod, feed: Feed, settings: TrainSettings, extra: dict) -> dict:
    """The self-describing `config.json` of a run (and of shipped weights)."""
    cfg = method.config
    return {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "encoder": {
            "patch_size": cfg.patch_size,
            "mpp": cfg.mpp,
            "dim": cfg.code_size,
            "normalization": NORMALIZATION,
        },
        "data": feed.describe(),
        "settings": asdict(settings),
        "software": {
            "slidepress": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        **extra,
    }


def save_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    train_keys = sorted(k for k in rows[0] if k.startswith("train_"))
    val_keys = sorted(k for k in rows[0] if k.startswith("val_"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k in train_keys:
        axes[0].plot(epochs, [r[k] for r in rows], "-o", ms=3, label=k)
    if "val_loss" in rows[0]:
        axes[0].plot(epochs, [r["val_loss"] for r in rows], "-s", ms=3, label="val_loss")
    axes[0].set_title("losses")
    for k in val_keys:
        if k != "val_loss":
            axes[1].plot(epochs, [r[k] for r in rows], "-o", ms=3, label=k)
    axes[1].set_title("validation metrics")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def train_encoder(
    config: NICConfig,
    feed: Feed,
    out_dir: Path,
    settings: TrainSettings,
    *,
    resume: bool = False,
    extra: dict | None = None,
    on_epoch_start: Callable[[int, int], Advance | None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train `config.method` on `feed`; returns the final `config.json` content."""
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise UsageError(f"{out_dir} already holds a run; pass --resume or pick another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(settings.seed)
    method = build_method(config).to(device)
    optimizers = method.make_optimizers()
    schedulers = [
        torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=settings.lr_patience)
        for o in optimizers
    ]
    state = {
        "epoch": 0,
        "best": float("inf"),
        "best_epoch": 0,
        "bad": 0,
        "rows": [],
        "seconds": 0.0,
    }
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["config"] != config.to_dict():
            raise UsageError(f"{out_dir}: --resume with different settings than the saved run")
        method.load_state_dict(ckpt["model"])
        for o, s in zip(optimizers, ckpt["optimizers"], strict=True):
            o.load_state_dict(s)
        for sch, s in zip(schedulers, ckpt["schedulers"], strict=True):
            sch.load_state_dict(s)
        state = ckpt["state"]
        log(f"resuming after epoch {state['epoch']} (best val loss {state['best']:.5g})")
    extra = dict(extra or {})

    stopped_early = False
    for epoch in range(state["epoch"] + 1, settings.epochs + 1):
        t0 = time.perf_counter()
        # per-epoch seeds: a resumed run draws exactly what an uninterrupted one would
        torch.manual_seed(settings.seed * 100_003 + epoch)
        rng = np.random.default_rng([settings.seed, epoch])
        advance = on_epoch_start(epoch, feed.steps_per_epoch) if on_epoch_start else None
        method.train()
        train_rows = []
        for batch in feed.train_batches(rng):
            train_rows.append(method.training_step(to_device(batch, device), optimizers))
            if advance:
                advance(1)
        method.eval()
        val = _mean_logs([method.validation_step(to_device(b, device)) for b in feed.val_batches()])
        for sch in schedulers:
            sch.step(val["loss"])
        row = {
            "epoch": epoch,
            "lr": optimizers[-1].param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 2),
            **{f"train_{k}": v for k, v in _mean_logs(train_rows).items()},
            **{f"val_{k}": v for k, v in val.items()},
        }
        state["rows"].append(row)
        state["seconds"] += row["seconds"]
        state["epoch"] = epoch
        improved = val["loss"] < state["best"]
        if improved:
            state.update(best=val["loss"], best_epoch=epoch, bad=0)
            save_weights(method, out_dir / "model.safetensors")
        else:
            state["bad"] += 1
        write_csv(out_dir / "log.csv", state["rows"])
        summary = _summary(state, stopped_early=False)
        write_json(
            out_dir / "config.json",
            run_config(method, feed, settings, {**extra, "training": summary}),
        )
        with atomic_path(ckpt_path) as tmp:
            torch.save(
                {
                    "config": config.to_dict(),
                    "model": method.state_dict(),
                    "optimizers": [o.state_dict() for o in optimizers],
                    "schedulers": [s.state_dict() for s in schedulers],
                    "state": state,
                },
                tmp,
            )
        log(
            f"epoch {epoch}: "
            + " ".join(
                f"{k}={v:.4g}" for k, v in row.items() if k.startswith(("train_loss", "val_"))
            )
            + (" *" if improved else "")
        )
        if state["bad"] >= settings.patience:
            stopped_early = True
            log(f"early stop: no validation improvement for {settings.patience} epochs")
            break

    # final artefacts from the best weights
    from safetensors.torch import load_file

    method.load_state_dict(load_file(str(out_dir / "model.safetensors"), device=device))
    method.eval()
    save_curves(state["rows"], out_dir / "curves.png")
    images = feed.preview_images()
    if images is not None:
        panels = method.preview(images.to(device))
        if panels:
            save_patch_rows(panels, out_dir / "preview.png")
    final = run_config(
        method, feed, settings, {**extra, "training": _summary(state, stopped_early)}
    )
    write_json(out_dir / "config.json", final)
    return final


def _summary(state: dict, stopped_early: bool) -> dict:
    best = next((r for r in state["rows"] if r["epoch"] == state["best_epoch"]), {})
    return {
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val": {k: v for k, v in best.items() if k.startswith("val_")},
        "seconds": round(state["seconds"], 1),
        "stopped_early": stopped_early,
    }
