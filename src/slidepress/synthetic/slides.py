"""Small pyramidal TIFF slides written on the spot, so reader, tiling and pipeline tests need
no downloaded slide.

`write_pyramid_tiff` writes what a scanner's generic export looks like to the readers: tiled
pages (JPEG or lossless deflate), each reduced page a 2x box-downsample of the one above
(`subfiletype` 1), and optional resolution tags giving the level-0 mpp. An odd side gives the
non-integer downsamples (e.g. 2.0007) real pyramids have. `tissue_texture` is an image to put
in it: stained blobs on glass with pixel noise, so JPEG has edges, chroma and flat areas like
tissue, and tissue detection has something to find.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .mosaic import GLASS


def tissue_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: smooth stained blobs (about half the area) on glass, noise
    sigma 3."""
    from scipy import ndimage

    h, w = height, width
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(-(-h // 8), -(-w // 8), 3)), (3, 3, 0))
    field = np.kron(field, np.ones((8, 8, 1)))[:h, :w]
    tissue = np.clip(180 + 400 * field * np.array([1.0, -1.4, 0.6]), 40, 250)
    mask = ndimage.gaussian_filter(rng.random((-(-h // 32), -(-w // 32))), 1.5) > 0.5
    mask = np.kron(mask, np.ones((32, 32)))[:h, :w, None].astype(bool)
    img = np.where(mask, tissue, np.array(GLASS, np.float64)) + rng.normal(0, 3, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def pyramid_levels(
    image: np.ndarray, levels: int | None = None, min_side: int = 256
) -> list[np.ndarray]:
    """`image` and its 2x box-downsamples (each pixel the rounded mean of a 2 x 2 block; an odd
    last row or column is dropped): `levels` in all, or (None) until the longer side is at most
    `min_side` or the shorter would drop below 32 px."""
    out = [np.ascontiguousarray(image)]
    while True:
        h, w = out[-1].shape[:2]
        if levels is not None and len(out) >= levels:
            break
        if levels is None and (max(h, w) <= min_side or min(h, w) < 32):
            break
        if min(h, w) < 2:
            raise ValueError(f"cannot halve a {w} x {h} image {len(out)} times")
        h, w = h // 2, w // 2
        blocks = out[-1][: 2 * h, : 2 * w].reshape(h, 2, w, 2, -1).astype(np.float32)
        out.append(np.round(blocks.mean(axis=(1, 3))).astype(np.uint8))
    return out


def write_pyramid_tiff(
    path: str | Path,
    image: np.ndarray,
    *,
    mpp: float | None = None,
    levels: int | None = None,
    min_side: int = 256,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    **write_args: Any,
) -> Path:
    """Write `image` (H, W, 3 uint8) as a tiled pyramidal TIFF and return its path.

    mpp: level-0 resolution written as resolution tags (per level: mpp * 2**level); None
    writes none (the slide then has no resolution). levels / min_side: see `pyramid_levels`.
    compression: "jpeg" (with `quality`; YCbCr 4:2:0 unless write_args give
    `compressionargs`) or any tifffile name ("zlib": lossless, pixels round-trip exactly).
    write_args go to `tifffile.TiffWriter.write` for every page (e.g. photometric).
    """
    import tifffile

    path = Path(path)
    kw: dict[str, Any] = {"photometric": "rgb", "compression": compression, "metadata": None}
    if compression == "jpeg":
        kw["compressionargs"] = {"level": quality}
    kw.update(write_args)
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        for i, lv in enumerate(pyramid_levels(image, levels, min_side)):
            if mpp is not None:
                res = 1e4 / (mpp * 2**i)  # pixels per centimetre
                kw.update(resolution=(res, res), resolutionunit="CENTIMETER")
            tw.write(lv, tile=(tile, tile), subfiletype=1 if i else 0, **kw)
    return path
