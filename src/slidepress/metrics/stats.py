"""Statistics shared by every evaluation: ROC AUC, bootstrap confidence intervals, paired
bootstrap differences. One definition each, arguments in scikit-learn's order (truth first).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np

CI_LEVEL = 95.0  # percentile intervals: [2.5, 97.5]


def nan_on_error(fn: Callable[[], float]) -> float:
    """A metric that is undefined on this sample (one class, no events, constant) is NaN."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fn())
    except (ValueError, ZeroDivisionError):
        return float("nan")


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of labels `y` (N,) against `scores`: (N,) for a binary score, or (N, K) class
    probabilities (binary: the last column; K > 2: macro one-vs-rest). NaN when undefined
    (fewer than two classes present)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).reshape(-1)
    scores = np.asarray(scores)
    if len(np.unique(y)) < 2:
        return float("nan")
    if scores.ndim == 1:
        return nan_on_error(lambda: roc_auc_score(y, scores))
    if scores.shape[1] == 2:
        return nan_on_error(lambda: roc_auc_score(y, scores[:, 1]))
    labels = np.arange(scores.shape[1])
    return nan_on_error(
        lambda: roc_auc_score(y, scores, multi_class="ovr", average="macro", labels=labels)
    )


def rank_auc(pos: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Binary AUC of each row of `scores` (B, n) against boolean rows `pos` (B, n), ties
    counted 1/2: the whole bootstrap at once (a scikit-learn call per resample is ~100x
    slower)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n1 = pos.sum(axis=1)
    n0 = pos.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * pos).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def bootstrap_indices(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, len(y)) resample indices, stratified by class so that every class is in every
    resample. Same labels + seed -> same indices, so metrics of two models scored on them are
    paired."""
    rng = np.random.default_rng(seed)
    cols = [rng.choice(np.flatnonzero(y == c), size=(n, int((y == c).sum()))) for c in np.unique(y)]
    return np.concatenate(cols, axis=1)


def bootstrap_auc(y: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """`roc_auc` (same definition) on each resample (rows of `idx`), vectorised."""
    yb = y[idx]
    if scores.ndim == 1:
        return rank_auc(yb == yb.max(), scores[idx])
    if scores.shape[1] == 2:
        return rank_auc(yb == 1, scores[idx, 1])
    per_class = [rank_auc(yb == c, scores[idx, c]) for c in range(scores.shape[1])]
    return np.mean(per_class, axis=0)


def percentile_ci(values: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval of bootstrap values (NaNs ignored; (nan, nan) if none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    tail = (100.0 - CI_LEVEL) / 2
    low, high = np.percentile(v, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    outputs: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    stratify: np.ndarray | None = None,
) -> tuple[float, float]:
    """95 % percentile CI of ``metric_fn(y, outputs)`` over `n` bootstrap resamples of rows.

    Resamples where the metric is undefined (NaN or an error, e.g. a single class or no
    events) are skipped. `stratify` (one label per row) resamples within each stratum, which
    keeps class balance and avoids most undefined resamples."""
    y, outputs = np.asarray(y), np.asarray(outputs)
    rng = np.random.default_rng(seed)
    if stratify is None:
        strata = [np.arange(len(y))]
    else:
        s = np.asarray(stratify).reshape(-1)
        strata = [np.flatnonzero(s == v) for v in np.unique(s)]
    values = []
    for _ in range(n):
        idx = np.concatenate([rng.choice(rows, size=len(rows), replace=True) for rows in strata])
        v = nan_on_error(lambda idx=idx: metric_fn(y[idx], outputs[idx]))
        if math.isfinite(v):
            values.append(v)
    return percentile_ci(np.asarray(values))


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % CI of `a - b` over paired bootstrap values (same resamples)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan"), float("nan"), float("nan")
    low, high = percentile_ci(d)
    return float(d.mean()), low, high
