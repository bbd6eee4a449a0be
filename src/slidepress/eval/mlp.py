"""The probe of Tellez et al. (TPAMI 2019, Table 1): a small MLP trained on frozen features.

torch is imported inside the functions, so importing `slidepress.eval` stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError


@dataclass
class MlpProbe:
    """A trained probe: standardisation (fit on train) + the MLP, on CPU."""

    mean: np.ndarray
    std: np.ndarray
    model: Any
    best_epoch: int  # 1-based; the last epoch when no validation split was possible
    used_validation: bool
    history: list[float] = field(default_factory=list)  # validation loss per epoch

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K), float64."""
        import torch

        z = torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))
        self.model.eval()
        with torch.inference_mode():
            return torch.softmax(self.model(z), dim=1).double().numpy()


def _validation_split(y: np.ndarray, fraction: float, seed: int) -> np.ndarray | None:
    """Seeded, stratified indices for validation; None when the set is too small for one."""
    n, k = len(y), int(y.max()) + 1
    n_val = round(fraction * n)
    counts = np.bincount(y, minlength=k)
    if fraction <= 0 or n_val < max(10, k) or counts.min() < 2:
        return None
    from sklearn.model_selection import StratifiedShuffleSplit

    split = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    _, val = next(split.split(np.zeros(n), y))
    return np.sort(val)


def train_mlp_probe(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    epochs: int = 30,
    seed: int = 0,
    hidden: int = 256,
    lr: float = 1e-3,
    batch_size: int = 64,
    val_fraction: float = 0.1,
) -> MlpProbe:
    """Train the paper's probe: Linear(C, 256) -> BatchNorm -> LeakyReLU -> Linear(256, K).

    Softmax cross-entropy, Adam, a fixed number of epochs; a seeded, stratified 10 % of the
    training set picks the epoch with the lowest validation loss (too small a set: the last
    epoch). Deterministic for a seed: own RNG streams, one CPU thread.
    """
    try:
        import torch
        from torch import nn
    except ImportError:
        raise UsageError("the probe needs torch: pip install 'slidepress[torch]'") from None
    if epochs < 1:
        raise UsageError(f"epochs must be >= 1, got {epochs}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    val = _validation_split(y, val_fraction, seed)
    fit = np.setdiff1d(np.arange(len(y)), val) if val is not None else np.arange(len(y))
    mean = x[fit].mean(axis=0)
    std = x[fit].std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    z = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y)
    z_fit, y_fit = z[fit], yt[fit]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = nn.Sequential(
                nn.Linear(x.shape[1], hidden),
                nn.BatchNorm1d(hidden),
                nn.LeakyReLU(),
                nn.Linear(hidden, n_classes),
            )
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            loss_fn = nn.CrossEntropyLoss()
            gen = torch.Generator().manual_seed(seed)
            best_loss, best_epoch, best_state = math.inf, epochs, None
            history: list[float] = []
            for epoch in range(1, epochs + 1):
                model.train()
                order = torch.randperm(len(fit), generator=gen)
                for s in range(0, len(order), batch_size):
                    idx = order[s : s + batch_size]
                    if len(idx) < 2:  # BatchNorm needs two samples in training mode
                        continue
                    opt.zero_grad()
                    loss_fn(model(z_fit[idx]), y_fit[idx]).backward()
                    opt.step()
                if val is not None:
                    model.eval()
                    with torch.inference_mode():
                        v = float(loss_fn(model(z[val]), yt[val]))
                    history.append(v)
                    if v < best_loss:
                        best_loss, best_epoch = v, epoch
                        best_state = {k: t.clone() for k, t in model.state_dict().items()}
            if best_state is not None:
                model.load_state_dict(best_state)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return MlpProbe(mean, std, model, best_epoch, val is not None, history)
