"""`slidepress.metrics.stats`: ROC AUC against scikit-learn, the vectorised bootstrap AUC against
the per-resample definition, stratified reproducible resamples, and CIs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from slidepress.metrics.stats import (
    bootstrap_auc,
    bootstrap_ci,
    bootstrap_indices,
    nan_on_error,
    paired_difference,
    percentile_ci,
    rank_auc,
    roc_auc,
)


def _binary(n: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.3 * y + rng.normal(0.4, 0.25, n), 0, 1)


def test_roc_auc_matches_sklearn_binary():
    y, s = _binary()
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    proba = np.stack([1 - s, s], axis=1)  # (N, 2): the positive class is the last column
    assert roc_auc(y, proba) == pytest.approx(roc_auc_score(y, s))
    assert 0.5 < roc_auc(y, s) < 1.0  # informative, not perfect: the comparison means something
    assert roc_auc(y, -s) == pytest.approx(1 - roc_auc(y, s))


def test_roc_auc_matches_sklearn_three_classes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet([1, 1, 1], 90)
    p[np.arange(90), y] += 0.3  # some signal
    p /= p.sum(axis=1, keepdims=True)
    want = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert roc_auc(y, p) == pytest.approx(want)
    assert roc_auc(y, p) > 0.6


def test_roc_auc_is_nan_for_one_class():
    assert math.isnan(roc_auc(np.zeros(10, int), np.linspace(0, 1, 10)))
    assert math.isnan(roc_auc(np.ones(6, int), np.full((6, 2), 0.5)))
    assert math.isnan(nan_on_error(lambda: roc_auc_score([0, 0], [0.1, 0.2])))


def test_rank_auc_counts_ties_as_half_like_sklearn():
    y, s = _binary(60, seed=2)
    s = np.round(s, 1)  # many ties
    got = rank_auc((y == 1)[None], s[None])
    assert got.shape == (1,) and got[0] == pytest.approx(roc_auc_score(y, s))


@pytest.mark.parametrize("k", [2, 3])
def test_bootstrap_auc_equals_roc_auc_on_each_resample(k):
    rng = np.random.default_rng(3)
    y = rng.integers(0, k, 50)
    p = rng.dirichlet(np.ones(k), 50)
    if k == 2:
        p = np.round(p, 1)  # ties
    idx = bootstrap_indices(y, 25, seed=4)
    got = bootstrap_auc(y, p, idx)
    assert got.shape == (25,) and np.isfinite(got).all()
    np.testing.assert_allclose(got, [roc_auc(y[i], p[i]) for i in idx])
    assert len(set(np.round(got, 12))) > 1  # resamples differ


def test_bootstrap_auc_of_a_binary_score_vector():
    y, s = _binary(40, seed=5)
    idx = bootstrap_indices(y, 20, seed=6)
    np.testing.assert_allclose(bootstrap_auc(y, s, idx), [roc_auc(y[i], s[i]) for i in idx])


def test_bootstrap_indices_are_stratified_and_reproducible():
    y = np.array([0] * 3 + [1] * 20 + [2] * 7)
    idx = bootstrap_indices(y, 200, seed=7)
    assert idx.shape == (200, len(y))
    counts = np.bincount(y)
    assert all(np.array_equal(np.bincount(y[row], minlength=3), counts) for row in idx)
    assert np.array_equal(idx, bootstrap_indices(y, 200, seed=7))
    assert not np.array_equal(idx, bootstrap_indices(y, 200, seed=8))
    assert any(len(set(row)) < len(y) for row in idx)  # with replacement


def test_percentile_ci_ignores_non_finite():
    v = np.concatenate([np.arange(101, dtype=float), [np.nan, np.inf]])
    assert percentile_ci(v) == pytest.approx((2.5, 97.5))
    assert all(math.isnan(x) for x in percentile_ci(np.array([np.nan])))


def test_bootstrap_ci_known_answers():
    y = np.array([0] * 30 + [1] * 10)
    frac = lambda yy, _out: float(yy.mean())  # noqa: E731
    # stratified resamples keep the class counts: the fraction never moves
    lo, hi = bootstrap_ci(frac, y, np.zeros(len(y)), n=200, seed=0, stratify=y)
    assert lo == hi == pytest.approx(0.25)
    lo, hi = bootstrap_ci(frac, y, np.zeros(len(y)), n=200, seed=0)  # unstratified: it does
    assert lo < 0.25 < hi
    assert (lo, hi) == bootstrap_ci(frac, y, np.zeros(len(y)), n=200, seed=0)  # seeded


def test_bootstrap_ci_skips_undefined_resamples():
    y = np.array([0, 0, 0, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9])
    calls = []

    def auc(yy, ss):
        calls.append(1)
        return roc_auc_score(yy, ss)  # raises on resamples without the one positive

    lo, hi = bootstrap_ci(auc, y, scores, n=100, seed=1)
    assert len(calls) == 100 and lo == hi == 1.0  # the defined ones are all perfect


def test_paired_difference_known_answers():
    rng = np.random.default_rng(9)
    a = 0.8 + rng.normal(0, 0.02, 500)
    assert paired_difference(a, a) == (0.0, 0.0, 0.0)  # identical models: zero, zero width
    mean, lo, hi = paired_difference(a + 0.02, a)
    assert mean == pytest.approx(0.02) and lo == pytest.approx(0.02) and hi == pytest.approx(0.02)
    b = a + rng.normal(0.0, 0.02, 500)
    mean, lo, hi = paired_difference(b, a)
    assert lo < mean < hi and lo < 0 < hi
    assert all(math.isnan(x) for x in paired_difference([np.nan], [0.5]))
