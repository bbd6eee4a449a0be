"""compress_slide: slide -> pyramid of tiles at a target resolution -> codec -> container.

Each pyramid level is read from the source slide at its own resolution (through the same
tiling code as `encode`, so the source's own pyramid is used where it matches), not from
re-decoded tiles: lower levels are not coded twice.

Nothing is lost: every level-0 tile is read and tested on its own pixels (slide/glass.py);
only tiles of empty glass may be left out (policy `skip` / `constant`), and a coarser tile is
stored whenever one of the finer tiles under it is. Every stored level-0 tile is decoded
again and compared with the original, so the reported fidelity covers all tissue pixels of
the slide (metrics/fidelity.py), not a sample. Opt-in scores over every stored level-0 tile,
weighted by its tissue pixels: MS-SSIM, feature similarity (metrics/featsim.py, six depths of a
ResNet18 trained on pathology) and embedding similarity (metrics/embsim.py, any registry
encoder); they load torch and are recorded in the manifest's `fidelity`.

Work is split by blocks of tiles: a worker thread reads a block, tests, codes and re-decodes
its tiles (imagecodecs, Pillow and OpenSlide release the GIL); the calling thread only writes
the entries in order. In-flight blocks are bounded (stream.py), so memory does not grow with
the slide. The level loop is coding.py's `code_levels`, shared with the bands of a slide split
across Dask tasks (compress_bands.py); so is the planning (`plan_compress`, `CompressPlan`) and
the writing of the container (`write_container`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from ..bounds import check_workers
from ..codecs import Codec, get_codec
from ..errors import OutputExistsError, TissueError, UsageError
from ..metrics.fidelity import SlideFidelity
from ..progress import ProgressStart
from ..slide import SlideReader
from ..slide.glass import Glass, Survey, estimate_glass, survey_tiles
from ..store.atomic import atomic_path, check_output, output_lock
from ..store.container import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ContainerLevel,
    ContainerWriter,
    check_background_policy,
    level_dict,
)
from ..tiling import GridSpec, TileGrid, check_target_mpp, plan_grid
from .coding import Level0Tally, check_torch, code_levels
from .items import SlideItem
from .provenance import content_sha256, slide_record, stamp

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
    background: str = "skip"  # skip | constant | keep
    workers: int = 2
    overwrite: bool = False
    reader: str | None = None
    ms_ssim: bool = False  # also MS-SSIM over every stored level-0 tile (needs torch)
    feature_similarity: bool = False  # also featsim (shipped ResNet18) over them (needs torch)
    embedding_similarity: str | None = None  # an encoder name: its embsim over them (torch)

    def __post_init__(self) -> None:
        check_background_policy(self.background)
        if self.tile < 16 or self.tile > 4096 or self.tile % 16:
            raise UsageError(f"tile size must be a multiple of 16 in 16-4096, got {self.tile}")
        if self.level is not None and self.mpp is not None:
            raise UsageError("give either --level or --mpp, not both")
        check_workers(self.workers)
        check_target_mpp(self.mpp)
        if self.embedding_similarity and self.embedding_similarity.lower() == "none":
            self.embedding_similarity = None
        if self.embedding_similarity:
            from ..encoders import check_spec

            check_spec(self.embedding_similarity)  # a typo fails before any tile is coded

    @property
    def keeps_pixels(self) -> bool:
        """Whether stored level-0 tiles and their decodings go to a scorer."""
        return self.ms_ssim or self.feature_similarity or bool(self.embedding_similarity)


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
    skipped: bool = False  # the container was already there for this content and parameters
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


def params_hash(sha: str, slide_mpp: float, opts: CompressOptions, codec: Codec) -> str:
    """The content key: what makes two containers the same, i.e. slide content and everything
    that shapes them, the codec library's version included (an upgraded libjxl may code other
    bytes)."""
    c = codec.describe()
    params = {
        "slide_sha256": sha,
        "mpp_used": slide_mpp,
        # a learned codec's weights too ("model"; absent for conventional codecs)
        "codec": {k: c.get(k) for k in ("name", "quality", "params", "library_version", "model")},
        "tile": opts.tile,
        "level": opts.level,
        "mpp": opts.mpp,
        "background": opts.background,
        "format_version": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _existing_hash(out: Path) -> str | None:
    from ..errors import SlidepressError
    from ..store.container import Container

    try:
        with Container(out) as c:
            return c.manifest.get("params_hash")
    except SlidepressError:
        return None


@dataclass
class CompressPlan:
    """What is settled about a slide's container before any tile is coded: the pyramid, the
    glass colour and survey, the content key. A whole-slide run and a run split into bands of
    rows (compress_bands.py: `compress_band` per band, then `merge_bands`) share it, so they
    write the same container; `split_state` hands it to other processes as plain data."""

    item: SlideItem
    out: Path
    codec: Codec
    reader: SlideReader  # the closed planning handle: `reopen` and `info` only
    slide_mpp: float
    levels: list[tuple[TileGrid, int, int]]  # (grid, width, height) per pyramid level
    glass: Glass
    survey: Survey | None
    sha256: str | None  # known when an output was there (or given by a split run)
    params_hash: str | None = None
    skipped: bool = False

    @property
    def base(self) -> TileGrid:
        return self.levels[0][0]

    def level0_todo(self) -> np.ndarray:
        """Level-0 tiles to read: all of them, or those the survey does not rule out."""
        base = self.base
        every = np.ones((base.rows, base.cols), bool)
        return self.survey.maybe_tissue() if self.survey is not None else every

    def split_state(self, opts: CompressOptions) -> dict[str, Any]:
        """What the tasks of a split run need from this plan, as plain data for
        `plan_compress(..., given=)`: the content key (the slide hashed once), the glass
        colour and the survey (read once)."""
        sha = self.sha256 or content_sha256(self.item.path)
        sv = self.survey
        return {
            "sha256": sha,
            "params_hash": params_hash(sha, self.slide_mpp, opts, self.codec),
            "glass": dataclasses.asdict(self.glass),
            "survey": None if sv is None else {
                "deviation": sv.deviation, "level": sv.level, "mpp": sv.mpp,
                "threshold": sv.threshold,
            },
        }  # fmt: skip


def check_scorers(opts: CompressOptions) -> None:
    """UsageError when a score the options ask for needs torch and it is not installed."""
    if opts.ms_ssim:
        check_torch()
    if (opts.feature_similarity or opts.embedding_similarity) and find_spec("torch") is None:
        raise UsageError(
            "--feature-similarity / --embedding-similarity need the torch extra: "
            "pip install 'slidepress[torch]'"
        )


def plan_compress(
    slide: str | Path | SlideItem,
    out: str | Path,
    opts: CompressOptions,
    codec: Codec,
    *,
    given: dict[str, Any] | None = None,
) -> CompressPlan:
    """Open the slide and settle its pyramid, glass colour and survey; `skipped` when `out`
    holds a container of the same content and parameters, OutputExistsError when it holds
    another (without `overwrite`). `given`: the `split_state` of a planning task (content
    key, glass, survey), so a band or merge task neither re-hashes nor re-surveys the slide
    and does not look at `out`."""
    item = SlideItem.of(slide)
    path = item.path
    out = Path(out)
    with item.open(opts.reader) as reader:
        slide_mpp = reader.require_mpp()
        base_mpp = _base_mpp(reader, opts)
        if given is not None:
            levels = _plan_levels(reader, slide_mpp, base_mpp, opts.tile)
            glass, survey = _glass_survey_from(given)
            return CompressPlan(
                item, out, codec, reader, slide_mpp, levels, glass, survey, given["sha256"],
                given["params_hash"],
            )  # fmt: skip
        sha_now = None
        key = None
        if out.exists():  # re-run: same content and parameters -> nothing to do
            sha_now = content_sha256(path)
            key = params_hash(sha_now, slide_mpp, opts, codec)
            if not opts.overwrite and _existing_hash(out) == key:
                return CompressPlan(
                    item, out, codec, reader, slide_mpp, [], Glass((255, 255, 255), 0, 0, ""),
                    None, sha_now, key, skipped=True,
                )  # fmt: skip
            if not opts.overwrite:
                raise OutputExistsError(
                    f"{out} exists (other slide content or parameters); use --overwrite"
                )
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
    return CompressPlan(item, out, codec, reader, slide_mpp, levels, glass, survey, sha_now, key)


def compress_slide(
    slide: str | Path | SlideItem,
    out: str | Path,
    opts: CompressOptions,
    progress_start: ProgressStart | None = None,
) -> CompressResult:
    """Compress one slide (a path, or a SlideItem with its own mpp override) into a container
    at `out` (written under a temporary name). An existing container made from the same slide
    content with the same parameters is kept (`skipped`); another needs `overwrite`."""
    t0 = time.perf_counter()
    item = SlideItem.of(slide)
    out = Path(out)
    check_output(out, overwrite=True, inputs=[item.path])  # path checks; existing: below
    codec = get_codec(opts.codec, opts.quality)
    check_scorers(opts)
    with output_lock(out):  # one run at a time on this container: a second is refused
        plan = plan_compress(item, out, opts, codec)
        if plan.skipped:
            return skipped_result(out, t0)
        levels = plan.levels
        total = int(sum(g.rows * g.cols for g, _, _ in levels))
        advance = progress_start(item.path.name, total) if progress_start else None
        hashing = ThreadPoolExecutor(1, thread_name_prefix="sha256")
        # overlaps the coding (hashlib releases the GIL)
        sha = hashing.submit(lambda: plan.sha256 or content_sha256(item.path))

        def fill(writer: ContainerWriter, tally: Level0Tally) -> None:
            code_levels(plan, opts, writer, range(len(levels)), tally=tally, advance=advance)

        try:
            return write_container(plan, opts, fill, sha.result, t0)
        finally:
            sha.cancel()
            hashing.shutdown(wait=True)


def write_container(
    plan: CompressPlan,
    opts: CompressOptions,
    fill: Callable[[ContainerWriter, Level0Tally], None],
    sha256: Callable[[], str],
    t0: float,
) -> CompressResult:
    """Write `plan.out` atomically: `fill(writer, tally)` puts every tile in (coding it, or
    copying the bands' parts) and level 0's accounts in the tally (which starts with the tiles
    the survey ruled out); then the manifest, with the slide's content hash `sha256()`."""
    tally = Level0Tally.for_options(opts, plan.base.effective_mpp)
    if plan.survey is not None:  # ruled out by the survey: glass, not read
        tally.fidelity.add_dropped_many(plan.survey.deviation[~plan.level0_todo()])
    with atomic_path(plan.out) as tmp:
        writer = open_writer(tmp, plan.codec, opts, plan.glass)
        try:
            fill(writer, tally)
            tally.finish()
            if not tally.fidelity.tiles_stored:
                raise _nothing_but_glass(plan.item.path, plan.glass)
            sha = sha256()
            manifest = _manifest(plan, opts, slide_record(plan.item.path, plan.reader, sha),
                                 writer, tally.fidelity)  # fmt: skip
            manifest["params_hash"] = params_hash(sha, plan.slide_mpp, opts, plan.codec)
            writer.close(manifest)
        except BaseException:
            writer.abort()
            raise
    levels = plan.levels
    return CompressResult(
        path=plan.out,
        container_bytes=plan.out.stat().st_size,
        source_bytes=manifest["source"]["bytes"],
        size=(levels[0][1], levels[0][2]),
        tiles_stored=manifest["tiles"]["stored"],
        tiles_total=manifest["tiles"]["total"],
        seconds=time.perf_counter() - t0,
        manifest=manifest,
        fidelity=tally.fidelity,
    )


def open_writer(tmp: Path, codec: Codec, opts: CompressOptions, glass: Glass) -> ContainerWriter:
    """A container writer, with the one background tile when glass is stored as constant."""
    writer = ContainerWriter(tmp, codec)
    if opts.background == "constant":
        flat = np.full((opts.tile, opts.tile, 3), glass.colour, np.uint8)
        writer.add_background(codec.encode(flat))
    return writer


def _nothing_but_glass(path: Path, glass: Glass) -> TissueError:
    return TissueError(
        f"{path.name}: nothing but glass found (no tile deviates from "
        f"the glass colour {glass.colour} by more than "
        f"{glass.threshold}); use --background keep to store it all"
    )


def _glass_survey_from(given: dict[str, Any]) -> tuple[Glass, Survey | None]:
    g = dict(given["glass"])
    glass = Glass(**{**g, "colour": tuple(g["colour"])})
    sv = given.get("survey")
    survey = None if sv is None else Survey(np.asarray(sv["deviation"]), sv["level"], sv["mpp"],
                                            sv["threshold"])  # fmt: skip
    return glass, survey


def _base_mpp(reader: SlideReader, opts: CompressOptions) -> float:
    """Resolution of the container's level 0: --mpp, or a source level (default 0)."""
    if opts.mpp is not None:
        return opts.mpp
    info = reader.info
    level = opts.level or 0
    if not 0 <= level < info.level_count:
        raise UsageError(
            f"{reader.path.name}: level {level} out of range 0..{info.level_count - 1}"
        )
    return reader.require_mpp() * info.level_downsamples[level]


def skipped_result(out: Path, t0: float) -> CompressResult:
    """The result of a run that found `out` up to date (its manifest's numbers)."""
    from ..store.container import Container

    with Container(out) as c:
        m = c.manifest
        lv0 = c.levels[0]
    return CompressResult(
        path=out,
        container_bytes=out.stat().st_size,
        source_bytes=m.get("source", {}).get("bytes", 0),
        size=(lv0.width, lv0.height),
        tiles_stored=m.get("tiles", {}).get("stored", 0),
        tiles_total=m.get("tiles", {}).get("total", 0),
        seconds=time.perf_counter() - t0,
        manifest=m,
        skipped=True,
    )


def _manifest(
    plan: CompressPlan,
    opts: CompressOptions,
    record: dict[str, Any],
    writer: ContainerWriter,
    fidelity: SlideFidelity,
) -> dict[str, Any]:
    levels, glass, survey = plan.levels, plan.glass, plan.survey
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
            **record,
            "level0_px_per_px": base.scale,
            "source_level": base.level,
            "resampled": base.resample,
        },
        "tile_size": opts.tile,
        "mpp": base.effective_mpp,
        "levels": [level_dict(lv) for lv in container_levels],
        "codec": plan.codec.describe(),
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
