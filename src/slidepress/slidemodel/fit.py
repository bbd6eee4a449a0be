"""Train one slide-level model on grids (random crops) and predict with test-time crops.

Adam with L2 (weight decay 1e-5, TPAMI 2019), plateau LR decay and early stopping on the
validation task metric (AUC / Spearman / C-index; the loss when the metric is undefined).
Classification averages softmax probabilities over the test crops (and returns their log, so
a softmax gives them back exactly); regression and survival average the raw outputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..progress import Advance
from .data import GridItem, random_crop, tta_crops
from .tasks import Task


@dataclass
class FitSettings:
    model: str = "nic-cnn"
    model_options: dict[str, Any] = field(default_factory=dict)
    crop: int = 64  # R: crop side in cells
    batch_size: int = 16
    steps_per_epoch: int = 50
    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 8  # epochs without validation improvement
    lr_patience: int = 3
    tta_crops: int = 4  # T
    tta_variants: int = 8
    seed: int = 0
    device: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _device(settings: FitSettings) -> str:
    return settings.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _as_task(task: Task | str) -> Task:
    from . import build_task

    return build_task(task) if isinstance(task, str) else task


@torch.no_grad()
def predict_items(
    model: torch.nn.Module,
    task: Task | str,
    items: list[GridItem],
    settings: FitSettings,
    n_crops: int | None = None,
    variants: int | None = None,
) -> np.ndarray:
    """(N, n_outputs): each slide's test-time crop outputs combined by the task (a `Task` or
    its registered name)."""
    task = _as_task(task)
    device = next(model.parameters()).device
    model.eval()
    out = []
    for it in items:
        crops = tta_crops(
            it, settings.crop, n_crops or settings.tta_crops, variants or settings.tta_variants
        )
        y = torch.cat(
            [
                model(torch.from_numpy(crops[i : i + 32]).to(device))
                for i in range(0, len(crops), 32)
            ]
        )
        out.append(task.combine_crops(y).cpu().numpy())
    return np.stack(out)


def _score(task: Task, outputs: np.ndarray, targets: np.ndarray) -> float:
    """The model-selection score (higher is better); NaN when undefined on this split."""
    try:
        v = task.metrics(outputs, targets).get(task.primary, float("nan"))
    except ValueError:
        return float("nan")
    return float(v) if v is not None else float("nan")


def fit_model(
    task: Task,
    train: tuple[list[GridItem], np.ndarray],
    val: tuple[list[GridItem], np.ndarray],
    n_outputs: int,
    settings: FitSettings,
    *,
    on_epoch: Callable[[int, int], Advance | None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Returns the best model (by validation score) and the per-epoch log rows."""
    from . import build_slide_model

    device = _device(settings)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    items, targets = train
    in_ch = items[0].features.shape[2]
    model = build_slide_model(settings.model, in_ch, n_outputs, **settings.model_options).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=0.5, patience=settings.lr_patience
    )
    y_all = task.target_tensor(targets)
    pools = task.batch_pools(targets, n_outputs)  # e.g. balanced classes
    best, best_state, bad, rows = -math.inf, None, 0, []
    for epoch in range(1, settings.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        advance = on_epoch(epoch, settings.steps_per_epoch) if on_epoch else None
        losses = []
        for _ in range(settings.steps_per_epoch):
            if pools:
                idx = np.array(
                    [rng.choice(pools[i % len(pools)]) for i in range(settings.batch_size)]
                )
            else:
                idx = rng.integers(0, len(items), settings.batch_size)
            x = torch.from_numpy(np.stack([random_crop(items[i], settings.crop, rng) for i in idx]))
            loss = task.loss(model(x.to(device)), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if advance:
                advance(1)
        val_out = predict_items(model, task, val[0], settings, n_crops=2, variants=2)
        with torch.no_grad():
            raw = torch.from_numpy(val_out)
            val_loss = float(task.loss(raw.to(device), task.target_tensor(val[1]).to(device)))
        score = _score(task, val_out, val[1])
        select = score if math.isfinite(score) else -val_loss
        sched.step(select)
        row = {
            "epoch": epoch,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": float(np.mean(losses)),
            "val_loss": val_loss,
            f"val_{task.primary}": score,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        rows.append(row)
        if select > best:
            best, bad = select, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if log:
            log(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                )
            )
        if bad >= settings.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, rows
