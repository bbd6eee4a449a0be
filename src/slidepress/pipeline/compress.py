"""compress_slide: slide -> pyramid of tiles at a target resolution -> codec -> container.

Each pyramid level is read from the source slide at its own resolution (through the same
tiling code as `encode`, so the source's own pyramid is used where it matches), not from
re-decoded tiles: lower levels are not coded twice.

Nothing is lost: every level-0 tile is read and tested on its own pixels (slide/glass.py);
only tiles of empty glass may be left out (policy `skip` / `constant`), and a coarser tile is
stored whenever one of the finer tiles under it is. Every stored level-0 tile is decoded
again and compared with the original, so the reported fidelity covers all tissue pixels of
the slide (metrics/fidelity.py), not a sample.

Work is split by blocks of tiles: a worker thread reads a block, tests, codes and re-decodes
its tiles (imagecodecs, Pillow and OpenSlide release the GIL); the calling thread only writes
the entries in order. In-flight blocks are bounded (stream.py), so memory does not grow with
the slide.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bounds import check_workers
from ..codecs import Codec, get_codec
from ..errors import TissueError, UsageError
from ..metrics.fidelity import SlideFidelity, squared_error
from ..slide import open_slide, resolve_slide_path
from ..slide.glass import (
    Glass,
    Survey,
    box_deviation,
    box_factor,
    estimate_glass,
    survey_tiles,
)
from ..slide.mpp import resolve_mpp
from ..store.atomic import atomic_path, check_output
from ..store.container import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ContainerLevel,
    ContainerWriter,
    check_background_policy,
    level_dict,
)
from ..tiling import GridSpec, TileGrid, check_target_mpp, plan_grid
from .provenance import content_sha256, slide_record, stamp
from .stream import iter_blocks

ProgressStart = Callable[[str, int], Callable[[int], None]]
BLOCK_TILES = 4  # blocks of up to 4 x 4 tiles per worker task
MS_SSIM_BATCH = 32
BACKGROUND_RULE = (
    "a level-0 tile is glass when no 2 um box of it deviates from the glass colour by more "
    "than the threshold (max over channels); tiles whose every pixel of a <= 2 um/px source "
    "level (the survey, one pixel of margin) stays SURVEY_MARGIN below it are glass unread; "
    "a coarser tile is stored when any tile under it is"
)


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
    ms_ssim: bool = False  # also MS-SSIM over every stored level-0 tile (needs torch)

    def __post_init__(self) -> None:
        check_background_policy(self.background)
        if self.tile < 16 or self.tile > 4096 or self.tile % 16:
            raise UsageError(f"tile size must be a multiple of 16 in 16-4096, got {self.tile}")
        if self.level is not None and self.mpp is not None:
            raise UsageError("give either --level or --mpp, not both")
        check_workers(self.workers)
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
    fidelity: SlideFidelity = field(default_factory=SlideFidelity)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def psnr(self) -> float:
        """PSNR over every tissue pixel of level 0 (dB)."""
        return self.fidelity.psnr

    @property
    def ms_ssim(self) -> float | None:
        return self.fidelity.ms_ssim

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


@dataclass
class _Tile:
    """What a worker reports for one tile: coded bytes (None: left out as glass) and scores."""

    row: int
    col: int
    data: bytes | None
    deviation: int = 0
    sse: float = 0.0
    values: int = 0
    original: np.ndarray | None = None  # kept only when MS-SSIM is wanted
    decoded: np.ndarray | None = None


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


def _children_kept(keep: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tiles of the next (2x coarser) level that cover at least one kept tile."""
    out = np.zeros((rows, cols), bool)
    r, c = np.nonzero(keep)
    out[np.minimum(r // 2, rows - 1), np.minimum(c // 2, cols - 1)] = True
    return out


class _LevelCoder:
    """Runs in the worker threads: tests, codes and checks the tiles of one block (level 0),
    or codes the tiles to store (coarser levels); tiles outside `todo` are not touched."""

    def __init__(
        self,
        grid: TileGrid,
        width: int,
        height: int,
        codec: Codec,
        todo: np.ndarray,
        level0: bool,
        glass: Glass,
        policy: str,
        ms_ssim: bool,
    ):
        self.grid, self.width, self.height = grid, width, height
        self.codec, self.todo, self.level0 = codec, todo, level0
        self.glass, self.policy = glass, policy
        self.ms_ssim = ms_ssim
        self.factor = box_factor(grid.effective_mpp)

    def __call__(self, block: tuple[int, int, int, int], pixels: np.ndarray) -> list[_Tile]:
        r0, r1, c0, c1 = block
        t = self.grid.spec.patch_size
        tiles = self.grid.cut_patches(pixels, r0, r1, c0, c1)
        out = []
        for i in range(r1 - r0):
            for j in range(c1 - c0):
                r, c = r0 + i, c0 + j
                if not self.todo[r, c]:  # glass by the survey / under no stored finer tile
                    continue
                if self.level0:
                    out.append(self._level0_tile(r, c, tiles[i, j], t))
                else:
                    data = self.codec.encode(np.ascontiguousarray(tiles[i, j]))
                    out.append(_Tile(r, c, data))
        return out

    def _level0_tile(self, r: int, c: int, tile: np.ndarray, t: int) -> _Tile:
        tile = np.ascontiguousarray(tile)  # one copy out of the block, used for everything
        vh, vw = min(t, self.height - r * t), min(t, self.width - c * t)
        valid = tile[:vh, :vw] if (vh, vw) != (t, t) else tile
        boxes = box_deviation(valid, self.glass, self.factor)
        deviation = int(boxes.max())
        if self.policy != "keep" and deviation <= self.glass.threshold:
            return _Tile(r, c, None, deviation)
        data = self.codec.encode(tile)
        decoded = self.codec.decode(data, shape=tile.shape)  # checks the codec's round trip
        restored = decoded[:vh, :vw]
        sse, values = squared_error(valid, restored, boxes > self.glass.threshold, self.factor)
        if not self.ms_ssim:
            return _Tile(r, c, data, deviation, sse, values)
        return _Tile(r, c, data, deviation, sse, values, valid.copy(), restored)


class _MsSsimScorer:
    """Batches stored tiles through torch's MS-SSIM (imported only when asked for)."""

    def __init__(self, fidelity: SlideFidelity):
        import torch

        self.fidelity = fidelity
        self.batch: list[_Tile] = []
        torch.set_num_threads(1)  # small convolutions: 2 threads were ~5x slower when busy

    def add(self, tile: _Tile) -> None:
        if tile.original is None:
            return
        self.batch.append(tile)
        if len(self.batch) >= MS_SSIM_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        from ..metrics import score_tiles

        scores = score_tiles([t.original for t in self.batch], [t.decoded for t in self.batch])
        weights = np.array([t.values / 3 for t in self.batch])
        self.fidelity.add_ms_ssim(scores.ms_ssim, weights)
        self.batch = []


def _check_torch() -> None:
    try:
        import pytorch_msssim  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise UsageError(
            "--ms-ssim needs the torch extra: pip install 'slidepress[torch]'"
        ) from None


def compress_slide(
    slide: str | Path,
    out: str | Path,
    opts: CompressOptions,
    progress_start: ProgressStart | None = None,
) -> CompressResult:
    """Compress one slide into a container at `out` (written under a temporary name)."""
    t0 = time.perf_counter()
    path = resolve_slide_path(slide)
    out = Path(out)
    check_output(out, overwrite=opts.overwrite, inputs=[path])
    codec = get_codec(opts.codec, opts.quality)
    if opts.ms_ssim:
        _check_torch()

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
        thumbnail, _ = reader.thumbnail(1024)
        glass = estimate_glass(thumbnail)
        del thumbnail
        base = levels[0][0]
        survey = None
        if opts.background != "keep":  # glass tiles need not be read at full resolution
            survey = survey_tiles(
                reader, glass, opts.tile * base.scale, base.rows, base.cols, slide_mpp,
                base.scale,
            )  # fmt: skip
        reader_name = info.reader

    total = int(sum(g.rows * g.cols for g, _, _ in levels))
    advance = progress_start(path.name, total) if progress_start else None
    fidelity = SlideFidelity()
    scorer = _MsSsimScorer(fidelity) if opts.ms_ssim else None
    hashing = ThreadPoolExecutor(1, thread_name_prefix="sha256")
    sha_future = hashing.submit(content_sha256, path)  # overlaps the coding (GIL released)

    try:
        with atomic_path(out) as tmp:
            writer = ContainerWriter(tmp, codec)
            try:
                if opts.background == "constant":
                    flat = np.full((opts.tile, opts.tile, 3), glass.colour, np.uint8)
                    writer.add_background(codec.encode(flat))
                keep = np.ones((base.rows, base.cols), bool)
                for lv, (grid, width, height) in enumerate(levels):
                    every = np.ones((grid.rows, grid.cols), bool)
                    if lv == 0:
                        todo = survey.maybe_tissue() if survey is not None else every
                        if survey is not None:  # ruled out by the survey: glass, not read
                            fidelity.add_dropped_many(survey.deviation[~todo])
                    elif opts.background == "keep":
                        todo = every
                    else:
                        todo = _children_kept(keep, grid.rows, grid.cols)
                    coder = _LevelCoder(
                        grid, width, height, codec, todo, lv == 0, glass, opts.background,
                        opts.ms_ssim,
                    )  # fmt: skip
                    stored = np.zeros((grid.rows, grid.cols), bool)
                    blocks = iter_blocks(
                        path, reader_name, grid, todo, opts.workers, BLOCK_TILES, process=coder
                    )
                    with closing(blocks):
                        for (r0, r1, c0, c1), tiles in blocks:
                            for tile in tiles:
                                if tile.data is not None:
                                    writer.add_tile(lv, tile.row, tile.col, tile.data)
                                    stored[tile.row, tile.col] = True
                                if lv == 0:
                                    if tile.data is None:
                                        fidelity.add_dropped(tile.deviation)
                                    else:
                                        fidelity.add_stored(tile.sse, tile.values)
                                        if scorer:
                                            scorer.add(tile)
                            if advance:
                                advance(int(todo[r0:r1, c0:c1].sum()))
                    if advance:  # tiles of this level ruled out without reading
                        advance(int((~todo).sum()))
                    if lv == 0:
                        if scorer:
                            scorer.flush()
                        if not stored.any():
                            raise TissueError(
                                f"{path.name}: nothing but glass found (no tile deviates from "
                                f"the glass colour {glass.colour} by more than "
                                f"{glass.threshold}); use --background keep to store it all"
                            )
                    keep = stored
                sha = sha_future.result()
                manifest = _manifest(
                    path, info, sha, slide_mpp, opts, levels, codec, glass, survey, writer,
                    fidelity,
                )  # fmt: skip
                writer.close(manifest)
            except BaseException:
                writer.abort()
                raise
    finally:
        sha_future.cancel()
        hashing.shutdown(wait=True)

    return CompressResult(
        path=out,
        container_bytes=out.stat().st_size,
        source_bytes=manifest["source"]["bytes"],
        size=(levels[0][1], levels[0][2]),
        tiles_stored=manifest["tiles"]["stored"],
        tiles_total=manifest["tiles"]["total"],
        seconds=time.perf_counter() - t0,
        manifest=manifest,
        fidelity=fidelity,
    )


def _manifest(
    path: Path,
    info: Any,
    sha: str,
    slide_mpp: float,
    opts: CompressOptions,
    levels: list[tuple[TileGrid, int, int]],
    codec: Codec,
    glass: Glass,
    survey: Survey | None,
    writer: ContainerWriter,
    fidelity: SlideFidelity,
) -> dict[str, Any]:
    base = levels[0][0]
    container_levels = [
        ContainerLevel(
            index=lv,
            width=w,
            height=h,
            rows=g.rows,
            cols=g.cols,
            downsample=g.scale / base.scale,
            mpp=g.effective_mpp,
        )  # fmt: skip
        for lv, (g, w, h) in enumerate(levels)
    ]
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **stamp(),
        "source": {
            **slide_record(path, info, sha, slide_mpp, opts.mpp_override is not None),
            "level0_px_per_px": base.scale,
            "source_level": base.level,
            "resampled": base.resample,
        },
        "tile_size": opts.tile,
        "mpp": base.effective_mpp,
        "levels": [level_dict(lv) for lv in container_levels],
        "codec": codec.describe(),
        "background": {
            "policy": opts.background,
            "colour": list(glass.colour) if opts.background == "constant" else [255, 255, 255],
            "glass": glass.describe(),
            "survey": survey.describe() if survey is not None else None,
            "rule": BACKGROUND_RULE,
        },
        "tiles": {
            "stored": writer.tile_count,
            "total": int(sum(g.rows * g.cols for g, _, _ in levels)),
        },
        "fidelity": fidelity.describe(),
    }
