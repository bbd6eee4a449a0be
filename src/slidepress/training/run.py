"""A training run's folder, budget and torch settings, the same for every model family.

Run folder: config.json (what was trained, from what; written by the family), log.csv (one
row per log interval: step, seconds, then the family's columns), curves.png (those columns
over steps or epochs), checkpoint.pt (`training.checkpoint`), and what the family adds
(best weights, previews, results). A folder holding anything is not reused without
`resume`; `resume` needs a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..store.atomic import save_figure, write_csv, write_json
from .checkpoint import FILE


class Run:
    """The folder of one training run; refuses to start over a run or to resume nothing."""

    def __init__(self, folder: str | Path, *, resume: bool = False):
        self.folder, self.resume = Path(folder), resume
        if resume and not self.checkpoint.is_file():
            raise UsageError(f"{self.folder}: nothing to resume (no {FILE})")
        if not resume and self.folder.is_dir() and any(self.folder.iterdir()):
            raise UsageError(
                f"{self.folder} already holds a run; pass --resume or pick another folder"
            )
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"output {self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path:
        return self.folder / FILE

    def path(self, name: str) -> Path:
        return self.folder / name

    def write_config(self, data: dict[str, Any]) -> None:
        write_json(self.folder / "config.json", data)

    def write_log(self, rows: list[dict]) -> None:
        write_csv(self.folder / "log.csv", rows)

    def write_curves(self, rows: list[dict]) -> None:
        if rows:
            save_curves(rows, self.folder / "curves.png")


@dataclass
class Budget:
    """How long a run trains: `steps` optimisation steps, and at most `minutes` of training
    (all sessions together) when given. Learning-rate schedules run over `fraction`."""

    steps: int
    minutes: float | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.minutes is None else self.minutes * 60

    def fraction(self, step: int, seconds: float) -> float:
        """How much of the budget is used: steps or time, whichever runs out first (on a
        shared CPU the step rate is not known in advance)."""
        t = step / max(1, self.steps)
        if self.seconds:
            t = max(t, seconds / self.seconds)
        return min(1.0, t)

    def out_of_time(self, seconds: float) -> bool:
        return self.seconds is not None and seconds >= self.seconds


def prepare_torch(seed: int, threads: int | None = None) -> None:
    """Seed torch (before the model is built), set its threads, flush denormals."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    # trained weights drift into subnormal floats: measured 4x slower steps without this
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)


def choose_device(device: str | None) -> str:
    """The device asked for, else a GPU when there is one."""
    from ..encoders.torch_encoder import pick_device

    return pick_device(device)


NOT_PLOTTED = ("step", "epoch", "seconds", "lr")


def save_curves(rows: list[dict], path: Path) -> None:
    """Losses (training, and the validation loss) on the left, other validation metrics on
    the right, over epochs when the rows have them, else steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = "epoch" if "epoch" in rows[0] else "step"
    xs = [r[x_key] for r in rows]
    metrics = [k for k in rows[0] if k.startswith("val_") and k != "val_loss"]
    losses = sorted(k for k in rows[0] if k not in NOT_PLOTTED and k not in metrics)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, keys, title in ((axes[0], losses, "losses"), (axes[1], metrics, "validation metrics")):
        for k in keys:
            ax.plot(xs, [r[k] for r in rows], "-o", ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
