"""Figures of a slide-model run: training curves per fold and Kaplan-Meier risk groups.
Computing stays in `cv` and the tasks; these only draw what they are given."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..store.atomic import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_km_plot(
    time: np.ndarray, event: np.ndarray, high: np.ndarray, logrank_p: float, path: Path
) -> None:
    """Kaplan-Meier curves of the low- and high-risk groups (`high`: bool per slide)."""
    from lifelines import KaplanMeierFitter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sel in (("low risk", ~high), ("high risk", high)):
        KaplanMeierFitter(label=f"{name} (n={sel.sum()})").fit(
            time[sel], event[sel]
        ).plot_survival_function(ax=ax)
    ax.set_title(f"Out-of-fold risk groups, log-rank p = {logrank_p:.2g}")
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    fig.tight_layout()
    save_figure(fig, path)


def save_curves(rows: list[dict], primary: str, path: Path) -> None:
    """Training / validation loss and the validation metric per epoch, one line per fold."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for f in sorted({r["fold"] for r in rows}):
        rr = [r for r in rows if r["fold"] == f]
        ep = [r["epoch"] for r in rr]
        axes[0].plot(ep, [r["train_loss"] for r in rr], label=f"fold {f} train")
        axes[0].plot(ep, [r["val_loss"] for r in rr], "--", label=f"fold {f} val")
        axes[1].plot(ep, [r[f"val_{primary}"] for r in rr], label=f"fold {f}")
    axes[0].set_title("loss")
    axes[1].set_title(f"validation {primary}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
