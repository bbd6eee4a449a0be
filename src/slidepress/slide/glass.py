"""What empty glass looks like on this slide, and whether a tile holds anything else.

Compression may leave a tile out only when it is glass. That decision is made on the tile's
own pixels at full resolution, not on the tissue mask (which is built for patch selection:
coarse, with small objects removed, and blind to pale tissue). The test, documented in the
README:

- The glass colour is the median of the brightest mode of the bright, near-neutral pixels of
  the slide's thumbnail (glass is the brightest grey thing on a bright-field slide); its noise
  is their robust spread. A slide that shows no glass is taken to be on white.
- A tile is box-averaged to ~2 um/px (`box_factor`), so that sensor noise and JPEG ringing
  average out while a 10 um fragment still covers several boxes; its *deviation* is the largest
  difference of any box, in any channel, from the glass colour. Only pixels inside the slide
  count (edge tiles are padded).
- The tile is glass when its deviation is at most `threshold` (20 levels; up to 32 on noisy
  glass). No small-object removal, no morphology: a single speck above the threshold keeps
  the tile. When in doubt, keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageChops

if TYPE_CHECKING:
    from .base import SlideReader

BOX_UM = 2.0  # box side (um) at which a tile's deviation from glass is measured
MIN_THRESHOLD = 20  # levels (0-255): largest box deviation a glass tile may show ...
MAX_THRESHOLD = 32  # ... raised on noisy glass (NOISE_FACTOR x its sigma), never above this
NOISE_FACTOR = 6.0
MAX_CHROMA = 16  # a glass candidate pixel: max - min channel within this ...
MIN_GLASS_LEVEL = 180  # ... and its darkest channel at least this
GLASS_BAND = 8  # candidates within this of the brightest mode's level are glass
MIN_GLASS_FRACTION = 0.002  # fewer candidates than this -> no glass seen: assume white
SAMPLE_PX = 1 << 18


@dataclass(frozen=True)
class Glass:
    colour: tuple[int, int, int]  # RGB of empty glass
    noise: float  # robust sigma (levels) of glass pixels around that colour
    threshold: int  # box deviation above which a tile holds something other than glass
    source: str  # "thumbnail" or "default" (no glass found: white assumed)

    def describe(self) -> dict:
        return {
            "colour": list(self.colour),
            "noise": round(self.noise, 2),
            "threshold": self.threshold,
            "source": self.source,
            "box_um": BOX_UM,
        }


def estimate_glass(thumbnail: np.ndarray) -> Glass:
    """Glass colour and noise from an RGB thumbnail (any size; a strided sample of at most
    SAMPLE_PX pixels is enough for a median).

    Candidates are bright near-neutral pixels; glass is their brightest mode (the 90th
    percentile of their brightness, +- GLASS_BAND), so pale tissue, which is also bright and
    nearly grey, is not mistaken for glass where some glass (or a tear) shows. Pure white is
    left out: readers paint it where nothing was scanned. Too few candidates (a crop with no
    glass) -> white, the most conservative choice."""
    rgb = thumbnail.reshape(-1, 3)
    if len(rgb) > SAMPLE_PX:
        rgb = rgb[:: -(-len(rgb) // SAMPLE_PX)]
    r, g, b = (rgb[:, i].astype(np.int16) for i in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    grey = ((mx - mn) <= MAX_CHROMA) & (mn >= MIN_GLASS_LEVEL) & (mn < 255)
    if grey.sum() < max(1, MIN_GLASS_FRACTION * len(rgb)):
        return Glass((255, 255, 255), 0.0, MIN_THRESHOLD, "default")
    cand = rgb[grey]
    level = (r[grey] + g[grey] + b[grey]) / 3.0
    # "higher": a level some candidate has, so the band is never empty (an interpolated
    # percentile can fall in the gap between two clusters, leaving no candidate near it)
    top = np.percentile(level, 90, method="higher")
    cand = cand[np.abs(level - top) <= GLASS_BAND]
    if not len(cand):  # cannot happen with "higher"; never round the median of nothing
        return Glass((255, 255, 255), 0.0, MIN_THRESHOLD, "default")
    colour = np.median(cand, axis=0)
    dev = np.abs(cand.astype(np.float32) - colour).max(axis=1)
    noise = float(1.4826 * np.median(dev))
    threshold = int(np.clip(round(NOISE_FACTOR * noise), MIN_THRESHOLD, MAX_THRESHOLD))
    return Glass(tuple(int(round(c)) for c in colour), noise, threshold, "thumbnail")


def box_factor(mpp: float) -> int:
    """Level pixels per box side so that one box spans ~BOX_UM (at least 1)."""
    return max(1, int(BOX_UM / mpp + 1e-9))


def box_deviation(tile: np.ndarray, glass: Glass, factor: int) -> np.ndarray:
    """Per-box deviation from glass: (ceil(h/f), ceil(w/f)) uint8, the max over channels of
    |box mean - glass colour|. Box means and differences in Pillow (C, no float copies)."""
    small = Image.fromarray(tile)
    if factor > 1:
        small = small.reduce(factor)
    d = np.asarray(ImageChops.difference(small, _flat(small.size, glass.colour)))
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])


@lru_cache(maxsize=16)
def _flat(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, colour)


def tile_deviation(tile: np.ndarray, glass: Glass, factor: int, valid: tuple[int, int]) -> int:
    """Largest box deviation from glass inside the valid (width, height) part of a tile."""
    w, h = valid
    if w <= 0 or h <= 0:
        return 0
    dev = box_deviation(tile[:h, :w], glass, factor)
    return int(dev.max())


SURVEY_MARGIN = 6  # levels: the survey only rules out tiles this far below the threshold
SURVEY_READ_SIDE = 512  # survey-level pixels per side read at once


@dataclass(frozen=True)
class Survey:
    """Largest deviation from glass of every tile, measured on a source pyramid level of at
    most BOX_UM um/px (each of its pixels is a box at least as fine as the tile test's)."""

    deviation: np.ndarray  # (rows, cols) uint8
    level: int
    mpp: float
    threshold: int  # tiles at or below this are glass without reading them at full resolution

    def maybe_tissue(self) -> np.ndarray:
        return self.deviation > self.threshold

    def describe(self) -> dict:
        return {"level": self.level, "mpp": self.mpp, "threshold": self.threshold}


def survey_level(downsamples: tuple[float, ...], slide_mpp: float, tile_scale: float) -> int | None:
    """The coarsest pyramid level (not 0) fine enough for the glass test (<= BOX_UM um/px)
    and coarse enough to be worth it (>= 2x the tiles' own scale); None if there is none."""
    best = None
    for level, ds in enumerate(downsamples):
        if level and slide_mpp * ds <= BOX_UM * 1.02 and ds >= 2 * tile_scale:
            best = level
    return best


def survey_tiles(
    reader: SlideReader,
    glass: Glass,
    tile0: float,
    rows: int,
    cols: int,
    slide_mpp: float,
    tile_scale: float,
) -> Survey | None:
    """Per-tile deviation from glass of a grid of `rows` x `cols` tiles of `tile0` level-0
    pixels, read from a coarse-enough pyramid level so that glass tiles need not be read and
    tested at full resolution (on a typical slide most of the area). Each tile's window is
    widened by one survey pixel on every side. None when the slide has no such level."""
    level = survey_level(reader.info.level_downsamples, slide_mpp, tile_scale)
    if level is None:
        return None
    ds = reader.info.level_downsamples[level]
    lw, lh = reader.info.level_dimensions[level]
    step = tile0 / ds  # survey pixels per tile (not always an integer)
    edges_x = [min(lw, max(0, math.floor(c * step) - 1)) for c in range(cols)]
    ends_x = [min(lw, math.ceil((c + 1) * step) + 1) for c in range(cols)]
    edges_y = [min(lh, max(0, math.floor(r * step) - 1)) for r in range(rows)]
    ends_y = [min(lh, math.ceil((r + 1) * step) + 1) for r in range(rows)]
    out = np.zeros((rows, cols), np.uint8)
    band = max(1, int(SURVEY_READ_SIDE // max(step, 1.0)))
    for r0 in range(0, rows, band):
        r1 = min(rows, r0 + band)
        y0, y1 = edges_y[r0], max(ends_y[r1 - 1], edges_y[r0] + 1)
        if y0 >= lh:
            break
        for c0 in range(0, cols, band):
            c1 = min(cols, c0 + band)
            x0, x1 = edges_x[c0], max(ends_x[c1 - 1], edges_x[c0] + 1)
            if x0 >= lw:
                break
            px = reader.read_region((round(x0 * ds), round(y0 * ds)), level, (x1 - x0, y1 - y0))
            dev = box_deviation(px, glass, 1)
            for r in range(r0, r1):
                ys = slice(edges_y[r] - y0, ends_y[r] - y0)
                row = dev[ys]
                if not row.size:
                    continue
                for c in range(c0, c1):
                    win = row[:, edges_x[c] - x0 : ends_x[c] - x0]
                    if win.size:
                        out[r, c] = win.max()
    threshold = max(0, glass.threshold - SURVEY_MARGIN)
    return Survey(out, level, slide_mpp * ds, threshold)
