"""Bjøntegaard delta: the average rate (or quality) difference between two rate-distortion
curves over the quality (or rate) interval both cover.

BD-rate (Bjøntegaard, VCEG-M33, 2001): fit log10(rate) as a function of quality for the anchor
and the test codec, integrate both over the overlapping quality interval, and turn the mean
log difference into a percentage: `(10**mean_diff - 1) * 100`. Negative = the test codec needs
fewer bits for the same quality. BD-quality (BD-PSNR) swaps the axes: quality as a function of
log10(rate), mean difference in quality units over the overlapping log-rate interval; positive
= the test codec is better at the same rate.

Two interpolators:
  - "cubic": the original least-squares cubic polynomial (degree n-1 when fewer than 4 points);
  - "pchip": piecewise cubic Hermite through the points (monotone, no overshoot), the
    piecewise-cubic interpolation that later VCEG/JVET practice adopted because the global
    cubic can oscillate with more than 4 points or unevenly spread ones.

Points are first reduced to their RD envelope (`rd_envelope`): sorted by rate, a point that
does not improve quality over a cheaper one is dropped, as are non-finite ones (e.g. infinite
PSNR from an exact tile). Implemented here with numpy/scipy; tests cross-check it against the
`bjontegaard` package (FAU-LMS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METHODS = ("pchip", "cubic")
ArrayLike = Sequence[float] | np.ndarray


def rd_envelope(rate: ArrayLike, quality: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Points with finite, positive rate and finite quality, sorted by rate, keeping only those
    whose quality is strictly above every cheaper point's (so quality(rate) is increasing)."""
    r = np.asarray(rate, np.float64).reshape(-1)
    q = np.asarray(quality, np.float64).reshape(-1)
    if r.shape != q.shape:
        raise ValueError(f"{len(r)} rates but {len(q)} quality values")
    ok = np.isfinite(r) & np.isfinite(q) & (r > 0)
    r, q = r[ok], q[ok]
    order = np.lexsort((-q, r))  # by rate; at equal rate the best quality first
    keep_r, keep_q = [], []
    for ri, qi in zip(r[order], q[order], strict=True):
        if not keep_q or qi > keep_q[-1]:
            keep_r.append(ri)
            keep_q.append(qi)
    return np.asarray(keep_r), np.asarray(keep_q)


class _Curve:
    """y(x) by one of METHODS, with its exact integral."""

    def __init__(self, x: np.ndarray, y: np.ndarray, method: str):
        if method not in METHODS:
            raise ValueError(f"unknown BD interpolation {method!r}; choose from {METHODS}")
        if len(x) < 2:
            raise ValueError("a rate-distortion curve needs at least 2 distinct points")
        order = np.argsort(x)
        x, y = x[order], y[order]
        self.lo, self.hi = float(x[0]), float(x[-1])
        if method == "cubic":
            coef = np.polyfit(x, y, min(3, len(x) - 1))
            self._f = np.poly1d(coef)
            self._F = np.poly1d(np.polyint(coef))
        else:
            from scipy.interpolate import PchipInterpolator

            self._f = PchipInterpolator(x, y, extrapolate=False)
            self._F = None

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return self._f(x)

    def integral(self, a: float, b: float) -> float:
        if self._F is not None:
            return float(self._F(b) - self._F(a))
        return float(self._f.integrate(a, b))


def _overlap(a: _Curve, b: _Curve) -> tuple[float, float]:
    return max(a.lo, b.lo), min(a.hi, b.hi)


def overlap_fraction(quality_anchor: ArrayLike, quality_test: ArrayLike) -> float:
    """Share of the union of two quality ranges that both curves cover (0 = disjoint)."""
    qa, qt = np.asarray(quality_anchor, float), np.asarray(quality_test, float)
    qa, qt = qa[np.isfinite(qa)], qt[np.isfinite(qt)]
    if not len(qa) or not len(qt):
        return 0.0
    union = max(qa.max(), qt.max()) - min(qa.min(), qt.min())
    inter = min(qa.max(), qt.max()) - max(qa.min(), qt.min())
    return max(inter, 0.0) / union if union > 0 else 0.0


def bd_rate(
    rate_anchor: ArrayLike,
    quality_anchor: ArrayLike,
    rate_test: ArrayLike,
    quality_test: ArrayLike,
    method: str = "pchip",
) -> float:
    """Bjøntegaard delta rate in percent (negative = test saves bits); NaN if the quality
    ranges do not overlap. Rates in any positive unit (bpp, bytes), the same for both."""
    ra, qa = rd_envelope(rate_anchor, quality_anchor)
    rt, qt = rd_envelope(rate_test, quality_test)
    fa = _Curve(qa, np.log10(ra), method)
    ft = _Curve(qt, np.log10(rt), method)
    lo, hi = _overlap(fa, ft)
    if not hi > lo:
        return math.nan
    mean_diff = (ft.integral(lo, hi) - fa.integral(lo, hi)) / (hi - lo)
    return (10.0**mean_diff - 1.0) * 100.0


def bd_quality(
    rate_anchor: ArrayLike,
    quality_anchor: ArrayLike,
    rate_test: ArrayLike,
    quality_test: ArrayLike,
    method: str = "pchip",
) -> float:
    """Bjøntegaard delta quality (BD-PSNR for PSNR) in quality units (positive = test
    better at equal rate); NaN if the rate ranges do not overlap."""
    ra, qa = rd_envelope(rate_anchor, quality_anchor)
    rt, qt = rd_envelope(rate_test, quality_test)
    fa = _Curve(np.log10(ra), qa, method)
    ft = _Curve(np.log10(rt), qt, method)
    lo, hi = _overlap(fa, ft)
    if not hi > lo:
        return math.nan
    return (ft.integral(lo, hi) - fa.integral(lo, hi)) / (hi - lo)


def rate_at_quality(rate: ArrayLike, quality: ArrayLike, target: float) -> float:
    """Rate a codec needs for `target` quality, by pchip interpolation of log10(rate) on its
    RD envelope; NaN outside the measured quality range (no extrapolation)."""
    r, q = rd_envelope(rate, quality)
    if not math.isfinite(target) or not len(q) or not q[0] <= target <= q[-1]:
        return math.nan
    if len(q) == 1:
        return float(r[0])
    return float(10.0 ** _Curve(q, np.log10(r), "pchip")(target))
