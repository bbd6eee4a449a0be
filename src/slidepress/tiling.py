"""The grid of cells at a target resolution, and how each cell maps onto the slide.

Grid-size rule (documented in the README): with level-0 resolution m0 and target mpp m,
one target pixel spans f = m / m0 level-0 pixels. The slide is W_t = floor(W0 / f) target
pixels wide; with patch P and stride S there are cols = floor((W_t - P) / S) + 1 cells
(0 if W_t < P), likewise rows. Cell (r, c) covers target pixels [c*S, c*S + P) and its
level-0 top-left is (round(c*S*f), round(r*S*f)). With S = P this is (H/S, W/S) cells,
the partial last row/column dropped.

Pixels come from the deepest pyramid level at least as fine as the target; if that level is
within SNAP_TOLERANCE of the target it is used unresampled (the effective mpp is then the
level's own, e.g. 0.499 for a 0.5 request on a 0.499 um/px scan); otherwise a block is read
there and resampled (Lanczos) to the target.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .bounds import MAX_PATCH, check_range
from .errors import UsageError
from .slide.base import SlideReader

SNAP_TOLERANCE = 0.025


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
        img = Image.fromarray(pixels).resize((w_out, h_out), Image.Resampling.LANCZOS)
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


def plan_grid(reader: SlideReader, slide_mpp: float, spec: GridSpec) -> TileGrid:
    f = spec.mpp / slide_mpp
    level = reader.best_level_for_downsample(f, tolerance=SNAP_TOLERANCE)
    ds = reader.info.level_downsamples[level]
    if abs(f / ds - 1.0) <= SNAP_TOLERANCE:
        scale, resample = ds, False
    else:
        scale, resample = f, True
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
    )
