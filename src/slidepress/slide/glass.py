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

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops

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
    top = np.percentile(level, 90)
    cand = cand[np.abs(level - top) <= GLASS_BAND]
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
