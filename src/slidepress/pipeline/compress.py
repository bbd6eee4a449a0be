"""compress_slide: slide -> pyramid of tiles at a target resolution -> codec -> container.

Each pyramid level is read from the source slide at its own resolution (through the same
tiling code as `encode`, so the source's own pyramid is used where it matches), not from
re-decoded tiles: lower levels are not coded twice. Reading runs in worker threads
(stream.py); tiles are coded in a second thread pool (imagecodecs releases the GIL); the
calling thread writes entries in order. In-flight work is bounded.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..codecs import get_codec
from ..errors import UsageError
from ..slide import open_slide, resolve_slide_path
from ..slide.mpp import resolve_mpp
from ..slide.tissue import detect_tissue
from ..store.atomic import atomic_path
from ..store.container import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Container,
    ContainerLevel,
    ContainerWriter,
    check_background_policy,
    level_dict,
)
from ..tiling import GridSpec, TileGrid, check_target_mpp, plan_grid
from .provenance import content_sha256, slide_record, stamp
from .stream import iter_blocks

ProgressStart = Callable[[str, int], Callable[[int], None]]


@dataclass
class CompressOptions:
    codec: str = "jpegxl"
    quality: float | None = None  # None: the codec's default
    tile: int = 256
    level: int | None = None  # source pyramid level to store (default 0) ...
    mpp: float | None = None  # ... or a target resolution
    mpp_override: float | None = None
    background: str = "skip"  # skip | constant | keep
    workers: int = 2
    overwrite: bool = False
    reader: str | None = None
    sample_tiles: int = 32  # tissue tiles scored for PSNR / MS-SSIM after compressing

    def __post_init__(self) -> None:
        check_background_policy(self.background)
        if self.tile < 16 or self.tile > 4096 or self.tile % 16:
            raise UsageError(f"tile size must be a multiple of 16 in 16-4096, got {self.tile}")
        if self.level is not None and self.mpp is not None:
            raise UsageError("give either --level or --mpp, not both")
        if self.workers < 1:
            raise UsageError("workers must be >= 1")
        check_target_mpp(self.mpp)


@dataclass
class CompressResult:
    path: Path
    container_bytes: int
    source_bytes: int
    size: tuple[int, int]  # container level-0 width, height
    tiles_stored: int
    tiles_total: int
    seconds: float
    manifest: dict[str, Any]
    psnr: float | None = None
    ms_ssim: float | None = None
    scored_tiles: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole container over the level-0 area."""
        return self.container_bytes * 8 / (self.size[0] * self.size[1])

    @property
    def ratio_raw(self) -> float:
        return 24.0 / self.bpp

    @property
    def ratio_source(self) -> float:
        return self.source_bytes / self.container_bytes


def _full_grid(grid: TileGrid) -> tuple[TileGrid, int, int]:
    """The grid extended to cover partial edge tiles (they are read white-padded)."""
    w0, h0 = grid.slide_size
    width, height = math.floor(w0 / grid.scale), math.floor(h0 / grid.scale)
    t = grid.spec.patch_size
    full = dataclasses.replace(grid, rows=-(-height // t), cols=-(-width // t))
    return full, width, height


def _plan_levels(reader, slide_mpp: float, base_mpp: float, tile: int) -> list[tuple]:
    levels = []
    k = 0
    while True:
        grid = plan_grid(reader, slide_mpp, GridSpec(tile, tile, base_mpp * 2**k))
        full, width, height = _full_grid(grid)
        if width < 1 or height < 1:
            break
        levels.append((full, width, height))
        if max(width, height) <= tile:
            break
        k += 1
    return levels


def compress_slide(
    slide: str | Path,
    out: str | Path,
    opts: CompressOptions,
    progress_start: ProgressStart | None = None,
) -> CompressResult:
    t0 = time.perf_counter()
    path = resolve_slide_path(slide)
    out = Path(out)
    if out.exists() and path.exists() and out.resolve() == path.resolve():
        raise UsageError(f"refusing to overwrite the input {path}")
    if out.exists() and not opts.overwrite:
        raise UsageError(f"{out} exists; use --overwrite")
    if out.exists() and out.is_dir():
        raise UsageError(f"{out} is a folder; give a file name like out.spz")
    codec = get_codec(opts.codec, opts.quality)

    with open_slide(path, reader=opts.reader) as reader:
        info = reader.info
        slide_mpp = resolve_mpp(info, opts.mpp_override)
        if opts.mpp is not None:
            base_mpp = opts.mpp
        else:
            level = opts.level or 0
            if not 0 <= level < info.level_count:
                raise UsageError(
                    f"{path.name}: level {level} out of range 0..{info.level_count - 1}"
                )
            base_mpp = slide_mpp * info.level_downsamples[level]
        levels = _plan_levels(reader, slide_mpp, base_mpp, opts.tile)
        tissue = detect_tissue(reader, slide_mpp)
        reader_name = info.reader
        background_colour = _background_colour(tissue.thumbnail, tissue.mask)
    sha = content_sha256(path)

    keeps = []
    for grid, _, _ in levels:
        frac = tissue.fraction_in_boxes(grid.boxes()).reshape(grid.rows, grid.cols)
        keeps.append(frac > 0 if opts.background != "keep" else np.ones_like(frac, bool))
    if not keeps[0].any():
        raise UsageError(f"{path.name}: no tissue found; use --background keep to store it all")
    total = int(sum(k.sum() for k in keeps))
    advance = progress_start(path.name, total) if progress_start else None

    base_scale = levels[0][0].scale
    rng = np.random.default_rng(0)
    tissue_cells = np.argwhere(keeps[0])
    pick = rng.choice(len(tissue_cells), min(opts.sample_tiles, len(tissue_cells)), replace=False)
    samples = {tuple(tissue_cells[i]) for i in pick}
    originals: dict[tuple[int, int], np.ndarray] = {}

    with atomic_path(out) as tmp:
        writer = ContainerWriter(tmp, codec)
        try:
            if opts.background == "constant":
                writer.add_background(
                    codec.encode(np.full((opts.tile, opts.tile, 3), background_colour, np.uint8))
                )
            with ThreadPoolExecutor(opts.workers, thread_name_prefix="tile-code") as pool:
                inflight: deque[tuple[int, int, int, Future]] = deque()

                def drain(limit: int) -> None:
                    while len(inflight) > limit:
                        lv, r, c, fut = inflight.popleft()
                        writer.add_tile(lv, r, c, fut.result())
                        if advance:
                            advance(1)

                for lv, (grid, _, _) in enumerate(levels):
                    keep = keeps[lv]
                    for (r0, r1, c0, c1), pixels in iter_blocks(
                        path, reader_name, grid, keep, opts.workers, block_cells=4
                    ):
                        tiles = grid.cut_patches(pixels, r0, r1, c0, c1)
                        for i, j in zip(*np.nonzero(keep[r0:r1, c0:c1]), strict=True):
                            tile = np.ascontiguousarray(tiles[i, j])
                            if lv == 0 and (r0 + i, c0 + j) in samples:
                                originals[(r0 + i, c0 + j)] = tile
                            inflight.append((lv, r0 + i, c0 + j, pool.submit(codec.encode, tile)))
                        drain(4 * opts.workers)
                drain(0)
            container_levels = [
                ContainerLevel(
                    index=lv,
                    width=w,
                    height=h,
                    rows=g.rows,
                    cols=g.cols,
                    downsample=g.scale / base_scale,
                    mpp=g.effective_mpp,
                )  # fmt: skip
                for lv, (g, w, h) in enumerate(levels)
            ]
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                **stamp(),
                "source": {
                    **slide_record(path, info, sha, slide_mpp, opts.mpp_override is not None),
                    "level0_px_per_px": base_scale,
                    "source_level": levels[0][0].level,
                    "resampled": levels[0][0].resample,
                },
                "tile_size": opts.tile,
                "mpp": levels[0][0].effective_mpp,
                "levels": [level_dict(lv) for lv in container_levels],
                "codec": codec.describe(),
                "background": {
                    "policy": opts.background,
                    "colour": [int(v) for v in background_colour],
                    "rule": "a tile is background when no tissue-mask pixel falls inside it",
                },
                "tiles": {
                    "stored": writer.tile_count,
                    "total": int(sum(g.rows * g.cols for g, _, _ in levels)),
                },
                "tissue": {
                    "method": "otsu-saturation+morphology",
                    "mask_downsample": tissue.downsample,
                },
            }
            writer.close(manifest)
        except BaseException:
            writer.abort()
            raise

    result = CompressResult(
        path=out,
        container_bytes=out.stat().st_size,
        source_bytes=manifest["source"]["bytes"],
        size=(levels[0][1], levels[0][2]),
        tiles_stored=manifest["tiles"]["stored"],
        tiles_total=manifest["tiles"]["total"],
        seconds=time.perf_counter() - t0,
        manifest=manifest,
    )
    _score(result, originals)
    return result


def _score(result: CompressResult, originals: dict[tuple[int, int], np.ndarray]) -> None:
    """PSNR (pooled MSE) and mean MS-SSIM of sampled tissue tiles, decoded from the container."""
    if not originals:
        return
    from ..metrics import score_tiles

    with Container(result.path) as c:
        decoded = [c.read_tile(0, r, col) for (r, col) in originals]
    refs = list(originals.values())
    try:
        import pytorch_msssim  # noqa: F401
        import torch
    except ImportError:  # core install without the torch extra: PSNR only
        scores = score_tiles(refs, decoded, structural=False)
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small convolutions: 2 threads were ~5x slower when busy
        try:
            scores = score_tiles(refs, decoded)
        finally:
            torch.set_num_threads(threads)
    result.psnr, result.ms_ssim = scores.mean_psnr, scores.mean_ms_ssim
    result.scored_tiles = scores.n_scored


def _background_colour(thumbnail: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    if thumbnail is None or mask.all():
        return np.array([255, 255, 255], np.uint8)
    return np.median(thumbnail[~mask], axis=0).astype(np.uint8)
