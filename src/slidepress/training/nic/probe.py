"""The linear probe of issue 24: frozen encoder -> mean code of the `encode` grid cells of a
PCam patch -> standardised logistic regression, 5-fold CV AUC on out-of-fold scores.

Splits (fixed, seeded, drawn from PCam **valid** only, so that the 20,000 PCam train patches
all stay available for training):
- `heldout`: `PER_CLASS` patches per class, for the final table only. Training never sees them
  (`heldout_files` is what the nic24 feeds exclude).
- `select`: another `PER_CLASS` per class, disjoint from `heldout`: the validation split for
  model selection (the nic24 feeds validate on it, and the trainer probes on it each epoch).

A patch is encoded as `slidepress encode PATCH --mpp-override 0.972 --tissue-threshold 0`
would: resampled from 0.972 um/px to the encoder's mpp when they differ by more than the
grid's snap tolerance, cut into the grid's cells (top-left anchored, stride = patch), and
the cells' codes averaged (`benchmarks/bench_nic_probe.py --check` compares with the CLI).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

PROBE_MPP = 0.972  # PCam's resolution as the protocol overrides it
PER_CLASS = 400
SEED = 24  # issue 24
SNAP = 0.05  # the grid's snap tolerance: no resampling when mpps differ by less (relative)


def probe_split(pcam: Path, per_class: int = PER_CLASS, seed: int = SEED) -> dict:
    """{"heldout": (files, labels), "select": (files, labels)} from `pcam/valid`."""
    from ...imagefolder import list_image_folder

    files, labels, _ = list_image_folder(Path(pcam) / "valid")
    out: dict[str, tuple[list[Path], np.ndarray]] = {"heldout": ([], []), "select": ([], [])}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.random.default_rng([seed, int(c)]).permutation(len(idx))]
        for name, part in (("heldout", idx[:per_class]),
                           ("select", idx[per_class : 2 * per_class])):  # fmt: skip
            out[name][0].extend(files[i] for i in np.sort(part))
            out[name][1].extend([int(c)] * len(part))
    return {k: (f, np.asarray(y, np.int64)) for k, (f, y) in out.items()}


def heldout_files(pcam: Path) -> set[str]:
    """Names (class/file) of the held-out patches: never to be trained or validated on."""
    files, _ = probe_split(pcam)["heldout"]
    return {f"{f.parent.name}/{f.name}" for f in files}


def read_patches(files: list[Path]) -> np.ndarray:
    from ...imagefolder import read_rgb

    return np.stack([read_rgb(f) for f in files])


def grid_cells(images: np.ndarray, encoder_mpp: float | None, patch: int | None) -> np.ndarray:
    """(N, K, P, P, 3): the K grid cells of each image as `encode` cuts them (mean-rgb has no
    mpp/patch of its own: the CLI's defaults 0.5 um/px and 128 px apply)."""
    from PIL import Image

    mpp, p = encoder_mpp or 0.5, patch or 128
    n, h, w = images.shape[:3]
    scale = PROBE_MPP / mpp
    if abs(scale - 1) > SNAP:
        nh, nw = round(h * scale), round(w * scale)
        images = np.stack(
            [
                np.asarray(Image.fromarray(im).resize((nw, nh), Image.Resampling.LANCZOS))
                for im in images
            ]  # fmt: skip
        )
        h, w = nh, nw
    rows, cols = (h - p) // p + 1, (w - p) // p + 1
    if rows < 1 or cols < 1:
        raise ValueError(f"{h}x{w} px images hold no {p} px cell")
    cells = [images[:, r * p : (r + 1) * p, c * p : (c + 1) * p]
             for r in range(rows) for c in range(cols)]  # fmt: skip
    return np.stack(cells, 1)


def encode_mean(encode: Callable[[np.ndarray], np.ndarray], cells: np.ndarray,
                batch: int = 256) -> np.ndarray:  # fmt: skip
    """Mean code over each image's cells: (N, K, P, P, 3) -> (N, C)."""
    n, k = cells.shape[:2]
    flat = cells.reshape(n * k, *cells.shape[2:])
    out = np.concatenate([encode(flat[i : i + batch]) for i in range(0, len(flat), batch)])
    return out.reshape(n, k, -1).mean(1)


def cv_scores(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0):
    """Out-of-fold logistic-regression scores (standardised within each fold) and the
    per-fold AUCs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ...metrics.stats import roc_auc

    x = np.nan_to_num(np.asarray(x, np.float64))
    scores = np.zeros(len(y))
    fold_aucs = []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        clf.fit(x[tr], y[tr])
        scores[te] = clf.decision_function(x[te])
        fold_aucs.append(roc_auc(y[te], scores[te]))
    return scores, np.asarray(fold_aucs)


def probe_auc(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean 5-fold CV AUC (the per-epoch model-selection number)."""
    return float(cv_scores(features, labels)[1].mean())


class EpochProbe:
    """Probe a method's embedder on the `select` split (called by the trainer every epoch).

    The method's embedder sees the patch exactly as `encode` would give it to the shipped
    encoder (grid cells at the method's patch size, [-1, 1] input)."""

    def __init__(self, pcam: Path, patch: int, mpp: float, split: str = "select"):
        files, self.labels = probe_split(pcam)[split]
        self.cells = grid_cells(read_patches(files), mpp, patch)
        self.split = split

    def __call__(self, method) -> dict[str, float]:
        import torch

        embed = method.embedder().eval()
        device = next(method.parameters()).device

        def encode(p: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(p)).to(device)
                x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1)
                return embed(x).float().cpu().numpy()

        feats = encode_mean(encode, self.cells)
        return {"probe_auc": probe_auc(feats, self.labels)}
