"""Classical tissue detection at low resolution: saturation relative to the glass, then morphology.

H&E (or any stain) is coloured; glass is not, whatever its brightness. So a pixel is tissue
when its colour differs from the glass colour in *hue*, not in brightness:

- The glass colour comes from `glass.estimate_glass` (the brightest mode of bright near-neutral
  thumbnail pixels; white when no glass shows). Every pixel is white-balanced to it, and its
  *glass-relative saturation* is ``1 - min/max`` of the balanced channels: 0 on glass, the
  spread of the pixel's optical density over the channels (``-log(1 - s)``) otherwise. It does
  not change when a pixel is scaled (vignetting, uneven illumination, a dimmer scan) and it
  shrinks only in proportion when a stain is pale, so a fixed low cut keeps pale tissue that an
  Otsu cut on saturation (which splits pale from dark tissue when both are present) dropped.
  A channel brighter than the glass counts as glass (stain only absorbs), so the white that
  readers paint where nothing was scanned is not colour; that white is also left out when the
  glass colour is estimated.
- The cut is the glass's own noise (median + 4 robust sigma of that value over pixels within a
  few levels of the glass colour), never below `MIN_THRESHOLD` (so blank glass gives no tissue)
  and never above `MAX_THRESHOLD` (so noisy glass cannot hide tissue blended halfway to glass).
- A 3x3 median of the decision (a pixel counts when at least 5 of its 9 neighbours pass)
  removes isolated noise; very dark pixels (pen, folds, black borders) are not tissue.
- Closing (skimage disk(2)), opening (disk(1)), then objects smaller than `MIN_OBJECT_UM2` are
  removed and holes smaller than `MAX_HOLE_UM2` filled: sizes in um^2, so a 60 um fragment
  survives on any slide size (the former rule scaled with the thumbnail and removed it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .base import SlideReader
from .glass import Glass, estimate_glass

MASK_MPP = 4.0  # um/px at which the mask is computed (cells of 64 um cover 16 mask pixels)
MASK_MAX_SIDE = 4096
METHOD = "glass-relative-saturation+morphology"
MIN_THRESHOLD = 0.04  # glass-relative saturation below this is glass, whatever the noise
MAX_THRESHOLD = 0.08  # the noise-derived cut is never above this (tissue 50 % pale is ~0.13)
NOISE_FACTOR = 4.0  # cut = glass median + NOISE_FACTOR x robust sigma of glass pixels
GLASS_NEAR = 8  # levels: pixels this close to the glass colour in every channel sample its noise
DARK_LEVEL = 40  # pixels whose brightest channel is at most this are not tissue
MIN_OBJECT_UM2 = 400.0  # smaller connected pieces are removed (a 20 x 20 um speck)
MAX_HOLE_UM2 = 2_500.0  # smaller holes inside tissue are filled (a 50 x 50 um gap)
GLASS_SAMPLE_PX = 1 << 18  # pixels of the thumbnail the glass colour is estimated on
BAND_ROWS = 512  # rows processed at once (bounds the temporary arrays)


@dataclass
class TissueMask:
    mask: np.ndarray  # bool (h, w)
    downsample: float  # level-0 pixels per mask pixel
    threshold: float  # glass-relative saturation cut used
    thumbnail: np.ndarray | None = None  # the RGB image the mask was computed on
    glass: Glass | None = None  # the glass colour the pixels were balanced to
    mpp: float | None = None  # um per mask pixel (None when the slide's mpp was not given)
    method: str = field(default=METHOD)

    def describe(self) -> dict:
        """How the mask was made, for output metadata."""
        return {
            "method": self.method,
            "threshold": round(float(self.threshold), 4),
            "threshold_range": [MIN_THRESHOLD, MAX_THRESHOLD],
            "glass": self.glass.describe() if self.glass is not None else None,
            "mask_downsample": self.downsample,
            "mask_mpp": self.mpp,
            "min_object_um2": MIN_OBJECT_UM2,
            "max_hole_um2": MAX_HOLE_UM2,
            "dark_level": DARK_LEVEL,
            "fraction": round(float(self.mask.mean()), 4) if self.mask.size else 0.0,
        }

    def fraction_in_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Tissue fraction of level-0 boxes (N, 4: x, y, w, h), via a summed-area table."""
        m = self.mask
        sat = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.int32)  # <= 4096^2 fits int32
        np.cumsum(m, axis=0, dtype=np.int32, out=sat[1:, 1:])
        np.cumsum(sat[1:, 1:], axis=1, out=sat[1:, 1:])
        t = self.downsample
        x0 = np.floor(boxes[:, 0] / t + 0.5).astype(np.int64)
        y0 = np.floor(boxes[:, 1] / t + 0.5).astype(np.int64)
        x1 = np.floor((boxes[:, 0] + boxes[:, 2]) / t + 0.5).astype(np.int64)
        y1 = np.floor((boxes[:, 1] + boxes[:, 3]) / t + 0.5).astype(np.int64)
        x1 = np.maximum(x1, x0 + 1)
        y1 = np.maximum(y1, y0 + 1)
        h, w = m.shape
        x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
        y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
        area = (boxes[:, 2] / t) * (boxes[:, 3] / t)
        area = np.maximum(area, (x1 - x0) * (y1 - y0)).astype(np.float64)
        inside = (sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(area > 0, inside / np.maximum(area, 1e-9), 0.0)
        return np.clip(frac, 0.0, 1.0)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1], float32, without float copies of the RGB image."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b)  # 10x faster than rgb.max(axis=2) on 4096^2
    mn = np.minimum(np.minimum(r, g), b)
    out = (mx - mn).astype(np.float32)
    np.divide(out, mx, out=out, where=mx > 0)
    return out


def glass_saturation(rgb: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Saturation after white-balancing to the glass `colour`, float32 in [0, 1]: 0 on glass,
    unchanged when a pixel is scaled (brightness), proportional to a stain's strength.

    A channel brighter than the glass counts as glass (transmission capped at 1): stain only
    absorbs, and so white where nothing was scanned, or noise above the glass, is not colour."""
    gain = 1.0 / np.maximum(np.asarray(colour, np.float32), 1.0)
    r = np.minimum(rgb[..., 0] * gain[0], 1.0)
    g = np.minimum(rgb[..., 1] * gain[1], 1.0)
    b = np.minimum(rgb[..., 2] * gain[2], 1.0)
    mx = np.maximum(np.maximum(r, g), b)
    out = np.minimum(np.minimum(r, g), b)
    np.subtract(mx, out, out=out)
    np.divide(out, mx, out=out, where=mx > 0)
    return out


def _sample(rgb: np.ndarray, pixels: int = GLASS_SAMPLE_PX) -> np.ndarray:
    step = max(1, math.ceil(math.sqrt(rgb.shape[0] * rgb.shape[1] / pixels)))
    return rgb[::step, ::step]


def glass_threshold(rgb: np.ndarray, glass: Glass) -> float:
    """The cut on glass-relative saturation: median + NOISE_FACTOR robust sigma over sampled
    pixels within GLASS_NEAR levels of the glass colour, clipped to the fixed range."""
    px = _sample(rgb).reshape(-1, 3)
    near = (np.abs(px.astype(np.int16) - np.asarray(glass.colour, np.int16)) <= GLASS_NEAR).all(1)
    if near.sum() < 32:
        return MIN_THRESHOLD
    s = glass_saturation(px[near][None], glass.colour)[0]
    med = float(np.median(s))
    sigma = 1.4826 * float(np.median(np.abs(s - med)))
    return float(np.clip(med + NOISE_FACTOR * sigma, MIN_THRESHOLD, MAX_THRESHOLD))


# -- binary morphology with edge-replicated borders (numpy shifts: faster than scipy's
#    binary_* on 4096^2, and the image border neither grows nor erodes tissue) ---------------


def _cross(m: np.ndarray, op) -> np.ndarray:
    """One step of `op` (or / and) with the 4-neighbours: dilation / erosion by disk(1)."""
    out = m.copy()
    for axis in (0, 1):
        a = np.moveaxis(m, axis, 0)
        o = np.moveaxis(out, axis, 0)
        op(o[1:], a[:-1], out=o[1:])
        op(o[:-1], a[1:], out=o[:-1])
    return out


def dilate(m: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by skimage's disk(radius) for radius 1, 2 (a diamond: `radius` crosses)."""
    for _ in range(radius):
        m = _cross(m, np.logical_or)
    return m


def erode(m: np.ndarray, radius: int) -> np.ndarray:
    """Erosion by disk(radius) for radius 1, 2; outside the image counts as the border pixel."""
    for _ in range(radius):
        m = _cross(m, np.logical_and)
    return m


def majority3(m: np.ndarray) -> np.ndarray:
    """True where at least 5 of the 3x3 neighbours are True (edges reflected): equal to a
    3x3 median filter followed by the threshold, without sorting anything."""
    p = np.pad(m.view(np.uint8), 1, mode="symmetric")
    v = p[:-2] + p[1:-1] + p[2:]  # uint8: at most 9
    c = v[:, :-2] + v[:, 1:-1] + v[:, 2:]
    return c >= 5


def _remove_small(mask: np.ndarray, min_object_px: int, max_hole_px: int) -> np.ndarray:
    """Drop 8-connected objects under `min_object_px`; fill 4-connected background pieces
    under `max_hole_px` that do not touch the image border (a nook at the edge is no hole)."""
    if min_object_px > 1 and mask.any():
        lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        keep = sizes >= min_object_px
        keep[0] = False
        if not keep[1:].all():
            mask = keep[lab]
        del lab
    if max_hole_px > 0 and mask.any() and not mask.all():
        lab, n = ndimage.label(~mask)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        fill = sizes < max_hole_px
        fill[0] = False
        edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
        fill[edge] = False
        if fill.any():
            mask = mask | fill[lab]
    return mask


def segment_tissue(
    rgb: np.ndarray, *, mpp: float | None = None, glass: Glass | None = None
) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of an RGB thumbnail, and the glass-relative saturation cut used.

    `mpp` (um per thumbnail pixel) sizes the small-object and hole rules; without it the
    thumbnail is taken to be at MASK_MPP. `glass` defaults to `estimate_glass(rgb)`."""
    if glass is None:
        glass = estimate_glass(rgb)
    t = glass_threshold(rgb, glass)
    h, w = rgb.shape[:2]
    raw = np.empty((h, w), bool)
    for y0 in range(0, h, BAND_ROWS):
        band = rgb[y0 : y0 + BAND_ROWS]
        raw[y0 : y0 + BAND_ROWS] = glass_saturation(band, glass.colour) > t
    mask = majority3(raw)
    del raw
    # Very dark pixels (pen, folds, black borders) are not analysable tissue either.
    bright = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) > DARK_LEVEL
    mask &= bright
    del bright
    mask = erode(dilate(mask, 2), 2)  # closing: joins nuclei and pale cytoplasm
    mask = dilate(erode(mask, 1), 1)  # opening: drops one-pixel lines and specks
    px_um2 = (mpp if mpp and mpp > 0 else MASK_MPP) ** 2
    min_px = max(1, round(MIN_OBJECT_UM2 / px_um2))
    max_hole = max(0, round(MAX_HOLE_UM2 / px_um2))
    mask = _remove_small(mask, min_px, max_hole)
    return mask, t


def detect_tissue(reader: SlideReader, slide_mpp: float) -> TissueMask:
    """Tissue mask of a slide at ~MASK_MPP (at most MASK_MAX_SIDE px per side)."""
    w0, h0 = reader.info.dimensions
    downsample = max(1.0, MASK_MPP / slide_mpp, max(w0, h0) / MASK_MAX_SIDE)
    max_side = max(1, round(max(w0, h0) / downsample))
    thumb, ds = reader.thumbnail(max_side)
    glass = estimate_glass(thumb)
    mpp = slide_mpp * ds
    mask, t = segment_tissue(thumb, mpp=mpp, glass=glass)
    return TissueMask(mask=mask, downsample=ds, threshold=t, thumbnail=thumb, glass=glass, mpp=mpp)
