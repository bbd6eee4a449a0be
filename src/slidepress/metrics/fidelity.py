"""Whole-slide fidelity of a compressed slide, accumulated tile by tile (memory bounded).

"Tissue pixels" are the level-0 pixels of the 2 um boxes that deviate from the glass colour
by more than the glass threshold (slide/glass.py), i.e. everything but empty glass. PSNR is
pooled over all of them across the slide: stored tiles compare the decoded tile, dropped tiles
compare what a reader gets back (white, or the constant background tile) — by construction a
dropped tile has no tissue box, which the report shows as the largest deviation found in any
dropped tile. MS-SSIM (optional: it needs torch) is the mean over stored tiles weighted by
their tissue pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .quality import psnr_from_mse


def squared_error(
    orig: np.ndarray, restored: np.ndarray, box_mask: np.ndarray, factor: int
) -> tuple[float, int]:
    """(sum of squared errors, number of values) over the pixels of the boxes in `box_mask`
    ((ceil(h/f), ceil(w/f)) bool, one per `factor` x `factor` box), all channels.

    The absolute difference in uint8 (max - min: no casting loop), then one float32 BLAS dot
    over the whole tile, minus (or, when they are fewer, plus) the boxes gathered from a
    box-shaped view: the squares and the order of the float32 sums are those of the float32
    difference, so the result is the same to the bit, ~2x faster (this was the most
    expensive step of compress after the codec itself)."""
    if not box_mask.any():
        return 0.0, 0
    h, w = orig.shape[:2]
    d = np.maximum(orig, restored)
    d -= np.minimum(orig, restored)
    if box_mask.all():
        return _sum_of_squares(d), 3 * h * w
    if h % factor or w % factor:  # a partial edge tile: mask pixel by pixel
        m = np.repeat(np.repeat(box_mask, factor, axis=0), factor, axis=1)[:h, :w]
        d *= m[..., None]
        return _sum_of_squares(d), 3 * int(m.sum())
    boxes = d.reshape(h // factor, factor, w // factor, factor * 3)
    glass = ~box_mask
    n_glass = int(glass.sum())
    if 2 * n_glass <= box_mask.size:  # few glass boxes: all minus them
        gi, gj = np.nonzero(glass)
        sse = _sum_of_squares(d) - _sum_of_squares(boxes[gi, :, gj, :])
        return max(sse, 0.0), 3 * (h * w - n_glass * factor * factor)
    ti, tj = np.nonzero(box_mask)
    return _sum_of_squares(boxes[ti, :, tj, :]), 3 * len(ti) * factor * factor


def _sum_of_squares(d: np.ndarray) -> float:
    """Sum of the squares of uint8 values, as a float32 dot (exact below 2**24 per lane)."""
    flat = d.astype(np.float32).reshape(-1)
    return float(np.dot(flat, flat))


@dataclass
class SlideFidelity:
    """Running totals over level 0 of a slide, or of a part of it (a band of rows) that
    `merge`s into the whole-slide totals."""

    sse: float = 0.0
    values: int = 0  # tissue pixels x 3 channels
    tiles_stored: int = 0
    tiles_dropped: int = 0
    max_dropped_deviation: int = 0
    ms_ssim_sum: float = 0.0
    ms_ssim_weight: float = 0.0
    ms_ssim_tiles: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # a part's (sse, values) per stored tile, in order (None: not kept): its merge adds them
    # one by one as a whole-slide run does, so the pooled PSNR is the same to the bit
    terms: list[tuple[float, int]] | None = field(default=None, repr=False)

    def add_stored(self, sse: float, values: int) -> None:
        self.sse += sse
        self.values += values
        self.tiles_stored += 1
        if self.terms is not None:
            self.terms.append((sse, values))

    def merge(self, part: SlideFidelity) -> None:
        """Add the totals of a part of the slide (parts merged in whole-slide order)."""
        if part.terms is None and part.tiles_stored:
            raise ValueError("a part's fidelity merges only with its per-tile terms kept")
        for sse, values in part.terms or ():
            self.add_stored(sse, values)
        self.tiles_dropped += part.tiles_dropped
        self.max_dropped_deviation = max(self.max_dropped_deviation, part.max_dropped_deviation)
        self.ms_ssim_sum += part.ms_ssim_sum
        self.ms_ssim_weight += part.ms_ssim_weight
        self.ms_ssim_tiles += part.ms_ssim_tiles

    def add_dropped(self, deviation: int, sse: float = 0.0, values: int = 0) -> None:
        self.tiles_dropped += 1
        self.max_dropped_deviation = max(self.max_dropped_deviation, int(deviation))
        self.sse += sse
        self.values += values

    def add_dropped_many(self, deviations: np.ndarray) -> None:
        """Tiles left out without being read at full resolution (their survey deviations)."""
        if deviations.size:
            self.tiles_dropped += int(deviations.size)
            self.max_dropped_deviation = max(self.max_dropped_deviation, int(deviations.max()))

    def add_ms_ssim(self, values: np.ndarray, weights: np.ndarray) -> None:
        ok = np.isfinite(values) & (weights > 0)
        self.ms_ssim_sum += float(np.sum(values[ok] * weights[ok]))
        self.ms_ssim_weight += float(np.sum(weights[ok]))
        self.ms_ssim_tiles += int(ok.sum())

    @property
    def tissue_pixels(self) -> int:
        return self.values // 3

    @property
    def psnr(self) -> float:
        return psnr_from_mse(self.sse / self.values) if self.values else math.nan

    @property
    def ms_ssim(self) -> float | None:
        return self.ms_ssim_sum / self.ms_ssim_weight if self.ms_ssim_weight else None

    def describe(self) -> dict[str, Any]:
        psnr = self.psnr
        return {
            "scope": "level 0, every tissue pixel of the slide (2 um boxes deviating from glass)",
            "psnr_db": None if math.isnan(psnr) else (psnr if math.isfinite(psnr) else "inf"),
            "tissue_pixels": self.tissue_pixels,
            "ms_ssim": self.ms_ssim,
            "ms_ssim_tiles": self.ms_ssim_tiles,
            "tiles_stored": self.tiles_stored,
            "tiles_dropped": self.tiles_dropped,
            "max_dropped_deviation": self.max_dropped_deviation,
            **self.extra,
        }
