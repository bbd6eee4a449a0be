"""Distortion and rate of coded tiles, on uint8 RGB arrays (H, W, 3).

PSNR is plain numpy (float64, the three channels pooled, peak 255). SSIM and MS-SSIM come from
pytorch-msssim with its defaults (Gaussian window 11 px, sigma 1.5, K = (0.01, 0.03), data range
255, mean over R, G, B); torch is imported on first use so `import slidepress` stays light.

Small tiles. MS-SSIM compares 5 scales, each half the previous, and the 11 px window must fit
the coarsest, so pytorch-msssim refuses images whose shorter side is <= 160 px. A tile whose
shorter side is `s` is scored here on the largest `k <= 5` scales with `s > 10 * 2**(k-1)`
(k = 4 for 96 px PCam patches, 3 for 64 px, 1 for 11-20 px, where MS-SSIM equals SSIM) and the
first `k` standard weights (Wang et al. 2003) renormalised to sum to 1. `ms_ssim_scales` gives
`k`; values with different `k` are not comparable, so `TileScores` and the benchmark record it.
Under 11 px the window does not fit at all and SSIM and MS-SSIM are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PEAK = 255.0
RAW_BPP = 24.0  # uncompressed 8-bit RGB
SSIM_WIN = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli, Bovik 2003
_CHUNK = 16  # tiles per torch call: bounds memory (~40 MB of float maps per 256 px tile)

Tiles = Sequence[np.ndarray] | np.ndarray


def _check_pair(ref: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, test = np.asarray(ref), np.asarray(test)
    if ref.dtype != np.uint8 or test.dtype != np.uint8:
        raise ValueError(f"metrics take uint8 images, got {ref.dtype} and {test.dtype}")
    if ref.ndim != 3 or ref.shape[2] != 3:
        raise ValueError(f"metrics take (H, W, 3) RGB images, got {ref.shape}")
    if ref.shape != test.shape:
        raise ValueError(f"image shapes differ: {ref.shape} vs {test.shape}")
    return ref, test


def mse(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean squared error over all pixels and channels."""
    ref, test = _check_pair(ref, test)
    d = ref.astype(np.int32) - test.astype(np.int32)
    return float(np.mean(d * d, dtype=np.float64))


def psnr_from_mse(value: float, peak: float = PEAK) -> float:
    """PSNR in dB from an MSE: inf when the MSE is 0 (identical pixels)."""
    if not value >= 0:  # also catches NaN
        return math.nan
    return math.inf if value == 0 else 10.0 * math.log10(peak * peak / value)


def psnr(ref: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (peak 255); inf for identical images."""
    return psnr_from_mse(mse(ref, test))


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales fit a `height` x `width` tile (5 = standard, 0 = none)."""
    side, k = min(height, width), 0
    while k < len(MS_SSIM_WEIGHTS) and side > (SSIM_WIN - 1) * 2**k:
        k += 1
    return k


def ms_ssim_db(value: float) -> float:
    """MS-SSIM (or SSIM) as -10 log10(1 - value): spreads out the values crowded near 1."""
    if math.isnan(value):
        return math.nan
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)


def bits_per_pixel(n_bytes: int | float, n_pixels: int | float) -> float:
    """Coded bits per image pixel (all three channels together; raw RGB is 24)."""
    if n_pixels <= 0:
        raise ValueError(f"pixel count must be > 0, got {n_pixels}")
    return 8.0 * float(n_bytes) / float(n_pixels)


def compression_ratio(bpp: float, reference_bpp: float = RAW_BPP) -> float:
    """How many times smaller than the reference: raw 24 bpp by default, or a source file's
    bpp (e.g. the scanner's JPEG) to say what re-coding the given pixels would save."""
    return math.inf if bpp == 0 else reference_bpp / bpp


# -- SSIM / MS-SSIM through torch -----------------------------------------------------------


def _to_tensor(batch: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()


def _ssim_values(refs: np.ndarray, tests: np.ndarray) -> np.ndarray:
    """Per-image SSIM of two (N, H, W, 3) uint8 stacks."""
    if min(refs.shape[1:3]) < SSIM_WIN:
        return np.full(len(refs), np.nan)
    import torch
    from pytorch_msssim import ssim as _lib_ssim

    out = []
    with torch.no_grad():
        for i in range(0, len(refs), _CHUNK):
            x, y = _to_tensor(refs[i : i + _CHUNK]), _to_tensor(tests[i : i + _CHUNK])
            v = _lib_ssim(
                x, y, data_range=PEAK, size_average=False, win_size=SSIM_WIN,
                win_sigma=SSIM_SIGMA, K=SSIM_K,
            )  # fmt: skip
            out.append(v.double().numpy())
    return np.concatenate(out)


def _gauss_window(channels: int) -> Any:
    import torch

    coords = torch.arange(SSIM_WIN, dtype=torch.float) - SSIM_WIN // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g /= g.sum()
    return g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)


def _ssim_and_cs(x: Any, y: Any, win: Any) -> tuple[Any, Any]:
    """Per-channel SSIM and contrast-structure term, exactly as pytorch-msssim computes them
    (separable Gaussian, valid convolution); used where its 5-scale ms_ssim cannot run."""
    import torch.nn.functional as F

    def blur(t: Any) -> Any:
        c = t.shape[1]
        t = F.conv2d(t, win.transpose(2, 3), groups=c)
        return F.conv2d(t, win, groups=c)

    c1, c2 = (SSIM_K[0] * PEAK) ** 2, (SSIM_K[1] * PEAK) ** 2
    mu1, mu2 = blur(x), blur(y)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = blur(x * x) - mu1_sq
    s2 = blur(y * y) - mu2_sq
    s12 = blur(x * y) - mu12
    cs_map = (2 * s12 + c2) / (s1 + s2 + c2)
    ssim_map = ((2 * mu12 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def _ms_ssim_reduced(x: Any, y: Any, weights: Sequence[float]) -> Any:
    """MS-SSIM over len(weights) scales, mirroring pytorch-msssim's loop step for step."""
    import torch
    import torch.nn.functional as F

    win = _gauss_window(x.shape[1])
    terms = []
    for i in range(len(weights)):
        if i:
            pad = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=pad)
            y = F.avg_pool2d(y, kernel_size=2, padding=pad)
        s, cs = _ssim_and_cs(x, y, win)
        terms.append(torch.relu(cs if i < len(weights) - 1 else s))
    w = x.new_tensor(list(weights)).view(-1, 1, 1)
    return torch.prod(torch.stack(terms) ** w, dim=0).mean(1)


def _ms_ssim_values(refs: np.ndarray, tests: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-image MS-SSIM of two (N, H, W, 3) uint8 stacks, and the number of scales used."""
    k = ms_ssim_scales(*refs.shape[1:3])
    if k == 0:
        return np.full(len(refs), np.nan), 0
    import torch
    from pytorch_msssim import ms_ssim as _lib_ms_ssim

    weights = np.asarray(MS_SSIM_WEIGHTS[:k]) / sum(MS_SSIM_WEIGHTS[:k])
    out = []
    with torch.no_grad():
        for i in range(0, len(refs), _CHUNK):
            x, y = _to_tensor(refs[i : i + _CHUNK]), _to_tensor(tests[i : i + _CHUNK])
            if k == len(MS_SSIM_WEIGHTS):
                v = _lib_ms_ssim(
                    x, y, data_range=PEAK, size_average=False, win_size=SSIM_WIN,
                    win_sigma=SSIM_SIGMA, K=SSIM_K, weights=list(MS_SSIM_WEIGHTS),
                )  # fmt: skip
            else:
                v = _ms_ssim_reduced(x, y, weights.tolist())
            out.append(v.double().numpy())
    return np.concatenate(out), k


def ssim(ref: np.ndarray, test: np.ndarray) -> float:
    """SSIM (pytorch-msssim, Gaussian 11 px window); 1.0 for identical images, NaN under 11 px."""
    ref, test = _check_pair(ref, test)
    return float(_ssim_values(ref[None], test[None])[0])


def ms_ssim(ref: np.ndarray, test: np.ndarray) -> float:
    """MS-SSIM; on tiles <= 160 px on fewer scales (see the module docstring and
    `ms_ssim_scales`), NaN under 11 px."""
    ref, test = _check_pair(ref, test)
    return float(_ms_ssim_values(ref[None], test[None])[0][0])


# -- many tiles -------------------------------------------------------------------------------


@dataclass
class TileScores:
    """Per-tile scores of a set of tiles, and aggregates over the scored ones.

    Aggregates follow codec-evaluation practice: PSNR from the pixel-weighted mean MSE (not the
    mean of per-tile PSNRs, which an exact tile would make infinite), SSIM and MS-SSIM as plain
    means over tiles. Unscored tiles (e.g. background) hold NaN."""

    mse: np.ndarray  # (N,) float64
    psnr: np.ndarray  # (N,) dB
    ssim: np.ndarray  # (N,)
    ms_ssim: np.ndarray  # (N,)
    ms_ssim_scales: np.ndarray  # (N,) int, 0 where unscored or too small
    pixels: np.ndarray  # (N,) int64
    scored: np.ndarray  # (N,) bool

    @property
    def n_scored(self) -> int:
        return int(self.scored.sum())

    @property
    def pooled_mse(self) -> float:
        if not self.scored.any():
            return math.nan
        w = self.pixels[self.scored].astype(np.float64)
        return float(np.sum(self.mse[self.scored] * w) / w.sum())

    @property
    def mean_psnr(self) -> float:
        """PSNR of the pooled MSE."""
        return psnr_from_mse(self.pooled_mse)

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim[self.scored])) if self.scored.any() else math.nan

    @property
    def mean_ms_ssim(self) -> float:
        return float(np.mean(self.ms_ssim[self.scored])) if self.scored.any() else math.nan

    def summary(self) -> dict[str, float | int]:
        k = self.ms_ssim_scales[self.scored]
        return {
            "n_scored": self.n_scored,
            "psnr": self.mean_psnr,
            "ssim": self.mean_ssim,
            "ms_ssim": self.mean_ms_ssim,
            "ms_ssim_db": ms_ssim_db(self.mean_ms_ssim),
            "ms_ssim_scales_min": int(k.min()) if len(k) else 0,
            "ms_ssim_scales_max": int(k.max()) if len(k) else 0,
        }


def score_tiles(
    refs: Tiles,
    tests: Tiles,
    tissue: Sequence[bool] | np.ndarray | None = None,
    *,
    structural: bool = True,
) -> TileScores:
    """Score decoded tiles against their originals; with `tissue` (one bool per tile) only the
    tissue tiles are scored, so glass background does not inflate quality.

    Tiles may differ in size; equal sizes are batched through torch together.
    `structural=False` skips SSIM and MS-SSIM (NaN) when only PSNR is wanted."""
    n = len(refs)
    if len(tests) != n:
        raise ValueError(f"{n} reference tiles but {len(tests)} test tiles")
    scored = np.ones(n, bool) if tissue is None else np.asarray(tissue, bool).reshape(-1)
    if len(scored) != n:
        raise ValueError(f"tissue flags ({len(scored)}) do not match the tiles ({n})")
    out = TileScores(
        mse=np.full(n, np.nan),
        psnr=np.full(n, np.nan),
        ssim=np.full(n, np.nan),
        ms_ssim=np.full(n, np.nan),
        ms_ssim_scales=np.zeros(n, np.int64),
        pixels=np.zeros(n, np.int64),
        scored=scored,
    )
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in np.flatnonzero(scored):
        ref, test = _check_pair(refs[i], tests[i])
        out.mse[i] = mse(ref, test)
        out.psnr[i] = psnr_from_mse(out.mse[i])
        out.pixels[i] = ref.shape[0] * ref.shape[1]
        groups.setdefault(ref.shape, []).append(int(i))
    if structural:
        for idx in groups.values():
            r = np.stack([np.asarray(refs[i]) for i in idx])
            t = np.stack([np.asarray(tests[i]) for i in idx])
            out.ssim[idx] = _ssim_values(r, t)
            out.ms_ssim[idx], k = _ms_ssim_values(r, t)
            out.ms_ssim_scales[idx] = k
    return out
