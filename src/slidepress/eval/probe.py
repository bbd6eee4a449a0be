"""One encoder on one labelled dataset: embed, train the probe, score it (Tellez et al.,
TPAMI 2019, Table 1 protocol).

An encoder is only worth its bits if its embedding keeps what pathologists look for. PCam
(tumour vs not) has a fixed train/valid split; the tiny Kather 2016 sample is cross-validated.
The AUC's CI is a class-stratified bootstrap of the test set (`metrics.stats`); the bootstrap
AUCs are kept on the result so that two encoders on one dataset can be compared paired
(`eval.report.comparison_sentence`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..encoders import Encoder
from ..errors import UsageError
from ..metrics.stats import bootstrap_auc, bootstrap_indices, percentile_ci, roc_auc
from ..progress import ProgressStart
from .embedding import embed_folder
from .mlp import train_mlp_probe

BASELINE = "mean-rgb"  # the floor every learned encoder has to clear
CSV_COLUMNS = [
    "encoder", "encoder_version", "dim", "patch_size", "mpp", "dataset", "n_train", "n_test",
    "accuracy", "auc", "auc_ci_low", "auc_ci_high", "seconds",
]  # fmt: skip


@dataclass
class ProbeResult:
    """Metrics of one encoder on one dataset (+ the bootstrap AUCs, for paired comparisons)."""

    encoder: str
    encoder_version: str
    dim: int
    patch_size: int | None
    mpp: float | None
    dataset: str
    n_train: int
    n_test: int
    accuracy: float
    auc: float
    auc_ci_low: float
    auc_ci_high: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    boot_auc: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in CSV_COLUMNS}


def score_probe(
    encoder: Encoder,
    dataset: str,
    y: np.ndarray,
    proba: np.ndarray,
    accuracy: float,
    n_train: int,
    n_bootstrap: int,
    seed: int,
    t0: float,
    details: dict[str, Any],
) -> ProbeResult:
    """AUC of the test probabilities with its bootstrap CI (resamples seeded by `seed`, so
    every encoder on this test set gets the same ones), packed with the encoder's identity."""
    boot = None
    if n_bootstrap > 0:
        boot = bootstrap_auc(y, proba, bootstrap_indices(y, n_bootstrap, seed))
    lo, hi = percentile_ci(boot) if boot is not None else (math.nan, math.nan)
    return ProbeResult(
        encoder=encoder.name,
        encoder_version=str(encoder.version),
        dim=int(encoder.dim),
        patch_size=encoder.patch_size,
        mpp=encoder.mpp,
        dataset=dataset,
        n_train=n_train,
        n_test=len(y),
        accuracy=float(accuracy),
        auc=roc_auc(y, proba),
        auc_ci_low=lo,
        auc_ci_high=hi,
        seconds=time.perf_counter() - t0,
        details=details,
        boot_auc=boot,
    )


def pcam_splits(root: Path) -> tuple[Path, Path]:
    """(train, test) folders of a PCam copy; the test split is `valid` (or `test`)."""
    if not root.is_dir():
        raise UsageError(f"{root}: PCam folder not found")
    train = root / "train"
    test = next((root / s for s in ("valid", "test") if (root / s).is_dir()), None)
    if not train.is_dir() or test is None:
        raise UsageError(f"{root}: expected PCam splits {root}/train/<0|1> and {root}/valid/<0|1>")
    return train, test


def probe_pcam(
    encoder: Encoder,
    pcam_root: str | Path,
    *,
    dataset_mpp: float = 0.97,
    train_limit_per_class: int | None = 2000,
    test_limit_per_class: int | None = None,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 256,
    n_bootstrap: int = 1000,
    progress: ProgressStart | None = None,
) -> ProbeResult:
    """Train the probe on pcam/train, test on pcam/valid: accuracy, AUC of P(tumour), and a
    stratified-bootstrap 95 % CI of the AUC (test-set sampling only, one probe seed)."""
    t0 = time.perf_counter()
    train_dir, test_dir = pcam_splits(Path(pcam_root))
    opts = {"seed": seed, "batch_size": batch_size, "progress": progress}
    x_tr, y_tr, cls_tr = embed_folder(
        encoder, train_dir, dataset_mpp, limit_per_class=train_limit_per_class, **opts
    )
    x_te, y_te, cls_te = embed_folder(
        encoder, test_dir, dataset_mpp, limit_per_class=test_limit_per_class, **opts
    )
    if cls_tr != cls_te:
        raise UsageError(f"{pcam_root}: train classes {cls_tr} differ from test classes {cls_te}")
    if len(cls_tr) != 2:
        raise UsageError(f"{pcam_root}: PCam needs two classes (0, 1), found {cls_tr}")
    probe = train_mlp_probe(x_tr, y_tr, 2, epochs=epochs, seed=seed)
    proba = probe.predict_proba(x_te)
    acc = float((proba.argmax(axis=1) == y_te).mean())
    details = {
        "classes": cls_tr,
        "positive_class": cls_tr[1],
        "test_split": test_dir.name,
        "best_epoch": probe.best_epoch,
        "used_validation": probe.used_validation,
    }
    return score_probe(encoder, "pcam", y_te, proba, acc, len(y_tr), n_bootstrap, seed, t0, details)


def probe_kather(
    encoder: Encoder,
    kather_root: str | Path,
    *,
    dataset_mpp: float = 0.495,
    folds: int = 3,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 256,
    n_bootstrap: int = 1000,
    progress: ProgressStart | None = None,
) -> ProbeResult:
    """Stratified k-fold CV on Kather 2016: mean fold accuracy, and macro one-vs-rest AUC (with
    a bootstrap CI) on the pooled out-of-fold probabilities. n_train = mean fold training size."""
    from sklearn.model_selection import StratifiedKFold

    t0 = time.perf_counter()
    root = Path(kather_root)
    if not root.is_dir():
        raise UsageError(f"{root}: Kather folder not found")
    x, y, classes = embed_folder(
        encoder, root, dataset_mpp, seed=seed, batch_size=batch_size, progress=progress
    )
    k = len(classes)
    if k < 2:
        raise UsageError(f"{root}: needs at least two class folders, found {classes}")
    if folds < 2:
        raise UsageError(f"folds must be >= 2, got {folds}")
    smallest = int(np.bincount(y).min())
    if smallest < folds:
        raise UsageError(f"{root}: a class has {smallest} images, fewer than {folds} folds")
    oof = np.zeros((len(y), k))
    accs, n_trains, epochs_used = [], [], []
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for tr, te in cv.split(np.zeros(len(y)), y):
        probe = train_mlp_probe(x[tr], y[tr], k, epochs=epochs, seed=seed)
        oof[te] = probe.predict_proba(x[te])
        accs.append(float((oof[te].argmax(axis=1) == y[te]).mean()))
        n_trains.append(len(tr))
        epochs_used.append(probe.best_epoch)
    details = {
        "classes": classes,
        "folds": folds,
        "fold_accuracy": accs,
        "best_epoch": epochs_used,
        "auc_definition": "macro one-vs-rest on pooled out-of-fold probabilities",
    }
    n_train = round(float(np.mean(n_trains)))
    acc = float(np.mean(accs))
    return score_probe(encoder, "kather2016", y, oof, acc, n_train, n_bootstrap, seed, t0, details)
