"""The grid of cells at a target resolution, and how each cell maps onto the slide.

Grid-size rule (documented in the README): with level-0 resolution m0 and target mpp m,
one target pixel spans f = m / m0 level-0 pixels. The slide is W_t = floor(W0 / f) target
pixels wide; with patch P and stride S there are cols = floor((W_t - P) / S) + 1 cells
(0 if W_t < P), likewise rows. Cell (r, c) covers target pixels [c*S, c*S + P) and its
level-0 top-left is (round(c*S*f), round(r*S*f)). With S = P this is (H/S, W/S) cells,
the partial last row/column dropped.

Level choice (`LevelRule`, issue 19):
1. Snap. A pyramid level whose downsample d is within SNAP_TOLERANCE (5 %) of f, on either
   side (|f / d - 1| <= 0.05; the nearest one if several), is read as stored: no resampling,
   f becomes d and the grid records the effective mpp m0 * d (1.0 for a 0.97 request on a
   0.25 um/px scan with a 4x level; 0.499 for 0.5 on a 0.499 um/px scan). 5 % is within the
   spread of the resolutions scanners sell as one magnification (a "40x" scan is 0.23-0.26
   um/px; PCam's 0.97 um/px is 4 x 0.243), so a model meets such scale differences between
   sites anyway, and it is far below the 2x steps between a pathologist's objectives. Until
   issue 19 only 2.5 % was snapped, so 0.97 on a 1.0 um/px level (3 % off) read level 0 and
   resampled 3.88x: 12x the reading time of level 1, more than nic-multitask's forward pass.
2. Otherwise read the deepest level at least as fine as the target (d <= f: the nearest finer
   one, so never level 0 when the pyramid has a finer level closer to the target) and resample
   by r = f / d: box-average by k = floor(r / REDUCING_GAP) (Pillow `reduce`, ~1 add per input
   pixel), then Lanczos by the remaining r / k (1.5-3x). One Lanczos pass costs ~6 multiply-adds
   per input pixel and channel, about twice the JPEG decode of the same pixels; for r >= 3 the
   two steps take 3-14x less time at 41-49 dB PSNR against it on H&E (nic-multitask cosine
   0.9999: benchmarks/bench_resolution.py). Below 3x it is one Lanczos pass, as before.
A target finer than level 0 reads level 0 and upsamples (Lanczos).

`plan_grid(..., rule=LEGACY_RULE)` gives the rule before issue 19 (2.5 %, one Lanczos pass),
`EXACT_RULE` the reference (level 0, one Lanczos pass, never snapped unless f is exactly 1);
`use_rule` swaps the default for code that calls `plan_grid` itself (benchmarks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .bounds import MAX_PATCH, check_range
from .errors import UsageError
from .slide.base import SlideReader

SNAP_TOLERANCE = 0.05  # a level within 5 % of the target (either side) is read as stored
REDUCING_GAP = 1.5  # resampling: box-reduce by floor(r / 1.5), then Lanczos by the rest


@dataclass(frozen=True)
class LevelRule:
    """Which pyramid level `plan_grid` reads and how it resamples from it (module docstring)."""

    snap_tolerance: float = SNAP_TOLERANCE
    reducing_gap: float | None = REDUCING_GAP  # None: one Lanczos pass over the whole factor
    level0_only: bool = False  # read level 0 whatever the pyramid (the exact reference)

    def choose(self, downsamples: Sequence[float], f: float) -> tuple[int, bool]:
        """(level, snapped) for f level-0 pixels per target pixel."""
        levels = [0] if self.level0_only else range(len(downsamples))
        nearest = min(levels, key=lambda i: abs(math.log(f / downsamples[i])))
        if abs(f / downsamples[nearest] - 1.0) <= self.snap_tolerance:
            return nearest, True
        finer = [i for i in levels if downsamples[i] <= f]
        if not finer:  # finer than level 0: upsample from the finest level
            return min(levels, key=lambda i: downsamples[i]), False
        return max(finer, key=lambda i: downsamples[i]), False


RULE = LevelRule()  # the default of plan_grid (see use_rule)
LEGACY_RULE = LevelRule(snap_tolerance=0.025, reducing_gap=None)  # before issue 19
EXACT_RULE = LevelRule(snap_tolerance=0.0, reducing_gap=None, level0_only=True)


@contextmanager
def use_rule(rule: LevelRule) -> Iterator[LevelRule]:
    """Make `rule` the default of `plan_grid` for the duration, e.g. to run `encode_slide` with
    the legacy rule in a benchmark. Process-wide: not for concurrent plans with other rules."""
    global RULE
    before, RULE = RULE, rule
    try:
        yield rule
    finally:
        RULE = before


MPP_RANGE = (0.05, 100.0)  # what a user may ask for as a target resolution


def check_target_mpp(mpp: float | None) -> None:
    if mpp is not None and not (math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        raise UsageError(
            f"target mpp must be within {MPP_RANGE[0]}-{MPP_RANGE[1]} um/px, got {mpp}"
        )


@dataclass(frozen=True)
class GridSpec:
    """What the user asks for: cells of `patch_size` px every `stride` px at `mpp` um/px."""

    patch_size: int = 128
    stride: int = 128
    mpp: float = 0.5

    def __post_init__(self) -> None:
        check_range("patch size", self.patch_size, 1, MAX_PATCH)
        check_range("stride", self.stride, 1, MAX_PATCH)
        # any positive resolution: coarse pyramid levels of a container go far past 100 um/px
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise UsageError(f"target mpp must be > 0, got {self.mpp}")


@dataclass(frozen=True)
class TileGrid:
    """A `GridSpec` laid on one slide: level choice, scale, shape."""

    spec: GridSpec
    slide_mpp: float  # level-0 um/px actually used (file value or override)
    level: int
    level_downsample: float
    scale: float  # level-0 pixels per output pixel (effective)
    resample: bool
    rows: int
    cols: int
    slide_size: tuple[int, int]
    reducing_gap: float | None = REDUCING_GAP  # how `read_block` resamples (LevelRule)
    snap_tolerance: float = SNAP_TOLERANCE  # how the level was chosen (LevelRule)

    def rule_description(self) -> dict:
        """How pixels were chosen and resampled, for metadata and re-run keys (grids made
        under another rule are redone, not taken as done)."""
        return {"snap_tolerance": self.snap_tolerance, "reducing_gap": self.reducing_gap}

    @property
    def effective_mpp(self) -> float:
        return self.slide_mpp * self.scale

    @property
    def read_scale(self) -> float:
        """Level pixels per output pixel."""
        return self.scale / self.level_downsample

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    def origins(self) -> np.ndarray:
        """Level-0 (x, y) of every cell's top-left corner, shape (rows, cols, 2), int64."""
        s = self.spec.stride * self.scale
        xs = np.round(np.arange(self.cols) * s).astype(np.int64)
        ys = np.round(np.arange(self.rows) * s).astype(np.int64)
        out = np.empty((self.rows, self.cols, 2), np.int64)
        out[..., 0] = xs[None, :]
        out[..., 1] = ys[:, None]
        return out

    def boxes(self) -> np.ndarray:
        """Level-0 boxes (rows*cols, 4: x, y, w, h) in row-major order."""
        o = self.origins().reshape(-1, 2).astype(np.float64)
        size = self.spec.patch_size * self.scale
        return np.column_stack([o, np.full(len(o), size), np.full(len(o), size)])

    def blocks(self, keep: np.ndarray, block_cells: int) -> Iterator[tuple[int, int, int, int]]:
        """(r0, r1, c0, c1) rectangles of at most block_cells^2 cells, shrunk to the bounding
        box of their kept cells so that background around tissue is not decoded."""
        for r0 in range(0, self.rows, block_cells):
            r1 = min(r0 + block_cells, self.rows)
            for c0 in range(0, self.cols, block_cells):
                c1 = min(c0 + block_cells, self.cols)
                sub = keep[r0:r1, c0:c1]
                if not sub.any():
                    continue
                rr, cc = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
                yield r0 + rr[0], r0 + rr[-1] + 1, c0 + cc[0], c0 + cc[-1] + 1

    def read_block(self, reader: SlideReader, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Pixels of cells [r0, r1) x [c0, c1) at the target resolution, (h, w, 3) uint8."""
        p, s = self.spec.patch_size, self.spec.stride
        w_out = (c1 - c0 - 1) * s + p
        h_out = (r1 - r0 - 1) * s + p
        x = round(c0 * s * self.scale)
        y = round(r0 * s * self.scale)
        if not self.resample:
            return reader.read_region((x, y), self.level, (w_out, h_out))
        rs = self.read_scale
        w_in, h_in = max(1, round(w_out * rs)), max(1, round(h_out * rs))
        pixels = reader.read_region((x, y), self.level, (w_in, h_in))
        img = Image.fromarray(pixels).resize(
            (w_out, h_out), Image.Resampling.LANCZOS, reducing_gap=self.reducing_gap
        )
        return np.asarray(img)

    def cut_patches(self, block: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """(r1-r0, c1-c0, P, P, 3) view of the patches in a block read by `read_block`."""
        p, s = self.spec.patch_size, self.spec.stride
        nr, nc = r1 - r0, c1 - c0
        if s == p:
            return block.reshape(nr, p, nc, p, 3).swapaxes(1, 2)
        out = np.empty((nr, nc, p, p, 3), np.uint8)
        for i in range(nr):
            for j in range(nc):
                out[i, j] = block[i * s : i * s + p, j * s : j * s + p]
        return out


def plan_grid(
    reader: SlideReader, slide_mpp: float, spec: GridSpec, rule: LevelRule | None = None
) -> TileGrid:
    """`spec` laid on the slide: level, scale and shape by `rule` (default: `RULE`)."""
    rule = rule or RULE
    f = spec.mpp / slide_mpp
    level, snapped = rule.choose(reader.info.level_downsamples, f)
    ds = reader.info.level_downsamples[level]
    scale, resample = (ds, False) if snapped else (f, True)
    w0, h0 = reader.info.dimensions
    wt, ht = math.floor(w0 / scale), math.floor(h0 / scale)
    p, s = spec.patch_size, spec.stride
    cols = (wt - p) // s + 1 if wt >= p else 0
    rows = (ht - p) // s + 1 if ht >= p else 0
    return TileGrid(
        spec=spec,
        slide_mpp=slide_mpp,
        level=level,
        level_downsample=ds,
        scale=scale,
        resample=resample,
        rows=rows,
        cols=cols,
        slide_size=(w0, h0),
        reducing_gap=rule.reducing_gap,
        snap_tolerance=rule.snap_tolerance,
    )
