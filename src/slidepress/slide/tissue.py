"""Classical tissue detection at low resolution: Otsu on HSV saturation, then morphology.

H&E tissue is coloured, glass background is grey/white, so saturation separates them well
without a model. A floor on the threshold keeps blank slides from yielding noise "tissue".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_holes, remove_small_objects

from .base import SlideReader

MASK_MPP = 4.0  # um/px at which the mask is computed (cells of 64 um cover 16 mask pixels)
MASK_MAX_SIDE = 4096
MIN_SATURATION = 0.07  # below this nothing counts as stained tissue


@dataclass
class TissueMask:
    mask: np.ndarray  # bool (h, w)
    downsample: float  # level-0 pixels per mask pixel
    threshold: float  # saturation threshold used
    thumbnail: np.ndarray | None = None  # the RGB image the mask was computed on

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


def segment_tissue(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of an RGB thumbnail, and the saturation threshold used."""
    s = saturation(rgb)
    s = ndimage.median_filter(s, size=3)
    try:
        t = float(threshold_otsu(s))
    except ValueError:  # constant image
        t = 1.0
    t = max(t, MIN_SATURATION)
    mask = s > t
    del s
    # Very dark pixels (pen, folds, black borders) are not analysable tissue either.
    mask &= np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) > 40
    mask = ndimage.binary_closing(mask, structure=disk(2))
    mask = ndimage.binary_opening(mask, structure=disk(1))
    min_size = max(16, mask.size // 5000)
    mask = remove_small_objects(mask, max_size=min_size)
    mask = remove_small_holes(mask, max_size=min_size * 4)
    return mask, t


def detect_tissue(reader: SlideReader, slide_mpp: float) -> TissueMask:
    w0, h0 = reader.info.dimensions
    downsample = max(1.0, MASK_MPP / slide_mpp, max(w0, h0) / MASK_MAX_SIDE)
    max_side = max(1, round(max(w0, h0) / downsample))
    thumb, ds = reader.thumbnail(max_side)
    mask, t = segment_tissue(thumb)
    return TissueMask(mask=mask, downsample=ds, threshold=t, thumbnail=thumb)
