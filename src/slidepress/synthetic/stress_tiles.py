"""Tile sets the learned codec was not trained on, for testing its per-tile guard
(tests/test_learned_guard.py, benchmarks/bench_codec_speed.py): H&E remapped to DAB-like
IHC colours in HED space, flat tiles, noise and dark fluorescence-like tiles; and the
JPEG-XL bytes at equal pooled PSNR that the guard is held to."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..metrics.quality import psnr_from_mse


def he_crops(images: Sequence[np.ndarray], size: int = 256, per_image: int = 2) -> list[np.ndarray]:
    """Up to `per_image` corner crops of each RGB image."""
    out = []
    for a in images:
        h, w = a.shape[:2]
        if h < size or w < size:
            continue
        corners = [(0, 0), (h - size, w - size), (0, w - size), (h - size, 0)]
        for y, x in corners[:per_image]:
            out.append(np.ascontiguousarray(a[y : y + size, x : x + size, :3]))
    return out


def dab_like(tiles: Sequence[np.ndarray], dab: float = 5.0, hema: float = 0.7) -> list[np.ndarray]:
    """H&E -> an IHC look: haematoxylin kept (scaled by `hema`), eosin moved onto the DAB
    channel (scaled by `dab`: 5 gives dense brown, where the H&E-trained model loses to
    JPEG-XL) by skimage's Ruifrok-Johnston colour deconvolution."""
    from skimage.color import hed2rgb, rgb2hed

    out = []
    for t in tiles:
        hed = rgb2hed(t)
        new = np.stack([hed[..., 0] * hema, np.zeros_like(hed[..., 1]), hed[..., 1] * dab], -1)
        out.append(np.clip(np.round(hed2rgb(new) * 255), 0, 255).astype(np.uint8))
    return out


def flat_tiles(size: int = 256) -> list[np.ndarray]:
    """Glass, white, dark and a stain-coloured flat tile, plus a smooth gradient."""
    out = [np.full((size, size, 3), c, np.uint8)
           for c in ((242, 241, 245), (255, 255, 255), (20, 18, 25), (200, 120, 180))]  # fmt: skip
    ramp = np.linspace(180, 240, size)
    out.append(np.stack([np.add.outer(ramp, ramp) / 2] * 3, -1).round().astype(np.uint8))
    return out


def noise_tiles(size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Uniform noise, mild and faint Gaussian noise, and a dark fluorescence-like tile."""
    rng = np.random.default_rng(seed)

    def gauss(mean: float, sd: float, shape: tuple[int, ...]) -> np.ndarray:
        return np.clip(rng.normal(mean, sd, shape), 0, 255).astype(np.uint8)

    dark = gauss(12, 4, (size, size, 3))
    dark[size // 3 : size // 2, size // 4 : 3 * size // 4] = gauss(
        180, 30, (size // 2 - size // 3, 3 * size // 4 - size // 4, 3)
    )
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8), gauss(128, 10, (size, size, 3)),
            gauss(220, 3, (size, size, 3)), dark]  # fmt: skip


def pooled_psnr(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """PSNR of the pooled MSE (a slide's PSNR); inf where every tile is exact."""
    se = sum(float(((x.astype(np.float64) - y) ** 2).sum()) for x, y in zip(a, b, strict=True))
    return psnr_from_mse(se / sum(x.size for x in a))


def jpegxl_bytes_at_psnr(
    tiles: Sequence[np.ndarray], target: float, effort: int = 3, steps: int = 9
) -> tuple[int, float, float]:
    """(total bytes, quality, PSNR) of `jpegxl` (one quality for every tile, as a slide is
    coded) at the lowest quality found by bisection whose pooled PSNR reaches `target`
    (quality 100 where none does)."""
    import imagecodecs

    def code(q: float) -> tuple[int, float]:
        blobs = [imagecodecs.jpegxl_encode(t, level=q, effort=effort) for t in tiles]
        return sum(map(len, blobs)), pooled_psnr(
            tiles, [imagecodecs.jpegxl_decode(b) for b in blobs]
        )

    lo, hi = 1.0, 100.0
    best = (*code(hi), hi)
    if best[1] < target:
        return best[0], hi, best[1]
    for _ in range(steps):
        mid = (lo + hi) / 2
        n, p = code(mid)
        if p >= target:
            hi, best = mid, (n, p, mid)
        else:
            lo = mid
    return best[0], best[2], best[1]


def sweep(
    encode_decode: Callable[[list[np.ndarray], float], tuple[list[bytes], list[np.ndarray]]],
    tiles: list[np.ndarray],
    qualities: Sequence[float],
) -> list[dict]:
    """Rows per quality: bytes, pooled PSNR, and jpegxl's bytes at that PSNR."""
    rows = []
    for q in qualities:
        blobs, out = encode_decode(tiles, q)
        n, p = sum(map(len, blobs)), pooled_psnr(tiles, out)
        jn, jq, jp = jpegxl_bytes_at_psnr(tiles, p)
        rows.append({"quality": q, "bytes": n, "psnr": p, "jpegxl_bytes": jn,
                     "jpegxl_quality": jq, "jpegxl_psnr": jp, "vs_jpegxl": n / jn - 1})  # fmt: skip
    return rows
