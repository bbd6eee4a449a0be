"""The large pyramidal TIFF of real tissue the throughput benchmarks run on (encode, container,
readers, vs libvips, fidelity).

A mosaic of the lossless H&E tiles in ../shared/data/tiles (random crops, rotations and flips;
a smooth random tissue mask with glass background around it), written once as a 256 px
JPEG-tiled, 2x pyramidal TIFF at 0.5 um/px and cached in .bench/ as
`mosaic_<size>_q<quality>_s<seed>_v<MOSAIC_VERSION>.tiff`. It is generated band by band, never
held whole in memory; every pyramid level is rendered directly from box-downsampled sources,
exactly equal (up to uint8 rounding) to box-downsampling level 0. `check_slide` makes sure
OpenSlide and `slidepress info` read it as intended.

(The PCam mosaics of the slide-level benchmarks are another thing: `slidepress.synthetic`.)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common import BENCH_DIR, TILES_DIR, log, slidepress_exe

TILE = 256  # TIFF tile side
CELL = 320  # mosaic cell side at level 0 (one source crop per cell)
QUANT = 64  # crop offsets, cells and mask pixels are multiples of this: levels stay exact
MAX_LEVEL = 6  # 2**MAX_LEVEL == QUANT
BACKGROUND = (236, 234, 240)  # glass
TISSUE_FRACTION = 0.55
MOSAIC_VERSION = 1  # bump when the rendering changes (invalidates the cache)
MPP = 0.5  # level-0 resolution written in the file


def load_sources(tiles_dir: Path) -> list[np.ndarray]:
    """The RGB tiles (PNG) of at least one cell, the crops' sources."""
    from PIL import Image

    out = []
    for p in sorted(tiles_dir.glob("*.png")):
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        if min(a.shape[:2]) >= CELL:
            out.append(a)
    if not out:
        raise SystemExit(f"no PNG tiles of at least {CELL} px in {tiles_dir}")
    return out


def level_count(size: int) -> int:
    """Pyramid levels: halve until the top is ~512-1024 px, at most MAX_LEVEL halvings."""
    n = 1
    while n <= MAX_LEVEL and (size >> n) >= 512:
        n += 1
    return n


def box_reduce(a: np.ndarray, f: int) -> np.ndarray:
    """Box-average by an integer factor (partial edge boxes dropped)."""
    if f == 1:
        return a
    h, w = a.shape[0] // f, a.shape[1] // f
    v = a[: h * f, : w * f].reshape(h, f, w, f, 3).astype(np.float32).mean(axis=(1, 3))
    return np.round(v).astype(np.uint8)


class Mosaic:
    """A size x size slide: cells of CELL px, each a dihedral transform of a source crop."""

    def __init__(self, size: int, sources: list[np.ndarray], seed: int = 0):
        from scipy import ndimage

        self.size = size
        self.n_levels = n = level_count(size)
        self.sources = [[box_reduce(s, 1 << lv) for s in sources] for lv in range(n)]
        rng = np.random.default_rng(seed)
        nc = math.ceil(size / CELL)
        self.cell_src = rng.integers(0, len(sources), (nc, nc))
        self.cell_off = np.zeros((nc, nc, 2), np.int64)
        for s, src in enumerate(sources):
            sel = self.cell_src == s
            max_y, max_x = (src.shape[0] - CELL) // QUANT, (src.shape[1] - CELL) // QUANT
            self.cell_off[sel, 0] = rng.integers(0, max_y + 1, sel.sum()) * QUANT
            self.cell_off[sel, 1] = rng.integers(0, max_x + 1, sel.sum()) * QUANT
        self.cell_k = rng.integers(0, 8, (nc, nc))
        # Tissue: smooth random field thresholded to TISSUE_FRACTION, glass margin at the edges.
        m = math.ceil(size / QUANT)
        field = ndimage.gaussian_filter(rng.standard_normal((m, m)), sigma=max(2.0, 0.05 * m))
        border = max(1, round(0.03 * m))
        inner = field[border:-border, border:-border]
        thr = np.quantile(inner, 1 - TISSUE_FRACTION / (1 - 2 * 0.03) ** 2)
        self.mask = np.zeros((m, m), bool)
        self.mask[border:-border, border:-border] = inner > thr
        cpq = CELL // QUANT
        pad = nc * cpq - m
        mp = np.pad(self.mask, ((0, pad), (0, pad)))
        self.cell_any = mp.reshape(nc, cpq, nc, cpq).any(axis=(1, 3))

    def level_shape(self, level: int) -> tuple[int, int]:
        s = max(1, self.size >> level)
        return s, s

    def render(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0, y1) x [x0, x1) of `level` (outside the slide: background)."""
        h, w = y1 - y0, x1 - x0
        cs, q = CELL >> level, QUANT >> level
        canvas = np.empty((h, w, 3), np.uint8)
        nc = self.cell_src.shape[0]
        for i in range(y0 // cs, min(nc, -(-y1 // cs))):
            for j in range(x0 // cs, min(nc, -(-x1 // cs))):
                if not self.cell_any[i, j]:
                    continue
                oy, ox = (self.cell_off[i, j] >> level).tolist()
                crop = self.sources[level][self.cell_src[i, j]][oy : oy + cs, ox : ox + cs]
                k = int(self.cell_k[i, j])
                crop = np.rot90(crop, k % 4)
                if k >= 4:
                    crop = crop[:, ::-1]
                cy0, cx0 = i * cs, j * cs
                a0, a1 = max(y0, cy0), min(y1, cy0 + cs)
                b0, b1 = max(x0, cx0), min(x1, cx0 + cs)
                canvas[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = crop[
                    a0 - cy0 : a1 - cy0, b0 - cx0 : b1 - cx0
                ]
        my0, my1 = y0 // q, -(-y1 // q)
        mx0, mx1 = x0 // q, -(-x1 // q)
        mreg = np.zeros((my1 - my0, mx1 - mx0), bool)
        sub = self.mask[my0:my1, mx0:mx1]
        mreg[: sub.shape[0], : sub.shape[1]] = sub
        mup = mreg.repeat(q, 0).repeat(q, 1)[y0 - my0 * q :][:h, x0 - mx0 * q :][:, :w]
        lh, lw = self.level_shape(level)
        mup[max(0, lh - y0) :, :] = False
        mup[:, max(0, lw - x0) :] = False
        return np.where(mup[..., None], canvas, np.array(BACKGROUND, np.uint8))

    def tiles(self, level: int) -> Iterator[np.ndarray]:
        """Level tiles in TIFF (row-major) order, full TILE x TILE (edges padded)."""
        lh, lw = self.level_shape(level)
        nty, ntx = -(-lh // TILE), -(-lw // TILE)
        for ty in range(nty):
            band = self.render(level, ty * TILE, (ty + 1) * TILE, 0, ntx * TILE)
            for tx in range(ntx):
                yield np.ascontiguousarray(band[:, tx * TILE : (tx + 1) * TILE])


def write_pyramid(
    path: Path,
    mosaic: Mosaic,
    levels: list[int],
    *,
    quality: int,
    mpp: float,
    what: str,
    software: str,
) -> None:
    """A pyramidal JPEG-tiled BigTIFF of `mosaic` at the given levels (downsample 2^level),
    written under a temporary name and renamed when complete."""
    import tifffile

    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for i, level in enumerate(levels):
                tl = time.perf_counter()
                lh, lw = mosaic.level_shape(level)
                res = 1e4 / (mpp * (1 << level))  # px per cm
                tw.write(
                    mosaic.tiles(level),
                    shape=(lh, lw, 3),
                    dtype=np.uint8,
                    tile=(TILE, TILE),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    resolution=(res, res),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if i else 0,
                    description=f"slidepress {what}, level {level}, downsample {1 << level}",
                    metadata=None,
                    software=f"slidepress {software}",
                    maxworkers=os.cpu_count(),
                )
                log(f"  level {level}: {lw}x{lh} in {time.perf_counter() - tl:.1f} s")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def build_slide(
    size: int,
    bench_dir: Path = BENCH_DIR,
    tiles_dir: Path = TILES_DIR,
    *,
    quality: int = 90,
    seed: int = 0,
    rebuild: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """The cached mosaic TIFF for these settings (built if missing) and its build record."""

    name = f"mosaic_{size}_q{quality}_s{seed}_v{MOSAIC_VERSION}"
    path = bench_dir / f"{name}.tiff"
    record_path = bench_dir / f"{name}.build.json"
    if path.exists() and record_path.exists() and not rebuild:
        record = json.loads(record_path.read_text())
        record["cached"] = True
        log(f"slide: cached {path} ({path.stat().st_size / 1e6:.0f} MB)")
        return path, record
    bench_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mosaic = Mosaic(size, load_sources(tiles_dir), seed=seed)
    log(f"slide: building {size}x{size}, {mosaic.n_levels} levels -> {path}")
    write_pyramid(
        path, mosaic, list(range(mosaic.n_levels)), quality=quality, mpp=MPP,
        what="benchmark mosaic of real H&E tiles", software="benchmarks/tissue_slide.py",
    )  # fmt: skip
    record = {
        "path": str(path),
        "size_px": size,
        "levels": mosaic.n_levels,
        "jpeg_quality": quality,
        "tissue_fraction_design": float(mosaic.mask.mean()),
        "build_s": round(time.perf_counter() - t0, 2),
        "file_bytes": path.stat().st_size,
    }
    record_path.write_text(json.dumps(record, indent=2))
    record["cached"] = False
    log(f"slide: built in {record['build_s']:.1f} s, {record['file_bytes'] / 1e6:.0f} MB")
    return path, record


def check_slide(path: Path, size: int, levels: int) -> dict[str, Any]:
    """OpenSlide must open it with the right size, levels and mpp; `slidepress info` too."""
    import openslide

    with openslide.OpenSlide(str(path)) as s:
        mpp_x = float(s.properties.get("openslide.mpp-x", "nan"))
        mpp_y = float(s.properties.get("openslide.mpp-y", "nan"))
        info = {
            "openslide_vendor": s.properties.get("openslide.vendor"),
            "dimensions": list(s.dimensions),
            "level_count": s.level_count,
            "level_downsamples": [round(d, 3) for d in s.level_downsamples],
            "mpp": [mpp_x, mpp_y],
        }
    problems = []
    if tuple(info["dimensions"]) != (size, size):
        problems.append(f"dimensions {info['dimensions']} != {size}x{size}")
    if info["level_count"] != levels or levels < 2:
        problems.append(f"{info['level_count']} levels (wrote {levels})")
    if not (abs(mpp_x - MPP) < 1e-3 and abs(mpp_y - MPP) < 1e-3):
        problems.append(f"mpp {mpp_x}, {mpp_y} != {MPP}")
    r = subprocess.run(
        [slidepress_exe(), "info", str(path), "--json"], capture_output=True, text=True
    )
    if r.returncode != 0:
        problems.append(f"`slidepress info` failed (rc {r.returncode}): {r.stderr.strip()}")
    else:
        d = json.loads(r.stdout)
        info["slidepress_reader"] = d["reader"]
        if tuple(d["dimensions"]) != (size, size) or not d.get("mpp_plausible"):
            problems.append(f"`slidepress info` disagrees: {d}")
    if problems:
        raise SystemExit(f"{path.name}: bad benchmark slide: " + "; ".join(problems))
    return info
