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
the slide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from ..bounds import check_workers
from ..codecs import Codec, get_codec
from ..errors import OutputExistsError, TissueError, UsageError
from ..metrics.featsim import DEPTHS
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
from .coding import LevelCoder, MsSsimScorer, check_torch, children_kept
from .items import SlideItem
from .provenance import content_sha256, slide_record, stamp
from .stream import iter_blocks

BLOCK_TILES = 4  # blocks of up to 4 x 4 tiles per worker task
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


class SimilarityScorer:
    """Feature and embedding similarity of stored level-0 tiles vs their decodings, in batches
    on the calling thread (torch imported here), averaged over tiles weighted by their tissue
    pixels as MS-SSIM is; `finish` writes them into `fidelity.extra`."""

    BATCH = 32

    @classmethod
    def wanted(
        cls, fidelity: SlideFidelity, opts: CompressOptions, tile_mpp: float
    ) -> SimilarityScorer | None:
        """A scorer when the options ask for feature or embedding similarity, else None."""
        if not (opts.feature_similarity or opts.embedding_similarity):
            return None
        return cls(fidelity, opts.feature_similarity, opts.embedding_similarity, tile_mpp)

    def __init__(
        self, fidelity: SlideFidelity, feature: bool, encoder: str | None, tile_mpp: float
    ):
        import torch

        from ..metrics.embsim import resolve_encoder
        from ..metrics.featsim import shipped

        torch.set_num_threads(1)  # as MS-SSIM: next to the coding threads on a busy machine
        self.fidelity, self.tile_mpp = fidelity, tile_mpp
        self.featsim = shipped() if feature else None
        self.encoder = resolve_encoder(encoder) if encoder else None
        self.batch: list[Any] = []
        self.weight = 0.0
        self.tiles = 0
        self.feat_sum = np.zeros(len(DEPTHS))
        self.emb_sum = 0.0

    def add(self, tile: Any) -> None:
        if tile.original is None or tile.values <= 0:  # no tissue box: no weight
            return
        self.batch.append(tile)
        if len(self.batch) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        from ..metrics.embsim import embedding_similarity

        orig = [t.original for t in self.batch]
        dec = [t.decoded for t in self.batch]
        w = np.array([t.values / 3 for t in self.batch], np.float64)
        if self.featsim:
            self.feat_sum += w @ self.featsim.score(orig, dec).per_depth
        if self.encoder:
            sims = embedding_similarity(self.encoder, orig, dec, tile_mpp=self.tile_mpp)
            self.emb_sum += float(w @ sims)
        self.weight += float(w.sum())
        self.tiles += len(self.batch)
        self.batch = []

    def finish(self) -> None:
        self.flush()
        scope = "stored level-0 tiles, mean weighted by their tissue pixels"
        if self.featsim:
            per = self.feat_sum / self.weight if self.weight else np.full(len(DEPTHS), np.nan)
            fs = self.featsim
            self.fidelity.extra["feature_similarity"] = {
                "mean": float(per.mean()) if self.weight else None,
                "per_depth": {d: float(v) if self.weight else None
                              for d, v in zip(DEPTHS, per, strict=True)},
                "tiles": self.tiles, "scope": scope,
                "weights": {"name": fs.name, "sha256": fs.weights_hash},
            }  # fmt: skip
        if self.encoder:
            e = self.encoder.describe()
            self.fidelity.extra["embedding_similarity"] = {
                "mean": self.emb_sum / self.weight if self.weight else None,
                "encoder": e.get("name"), "weights_sha256": e.get("weights_hash"),
                "tile_mpp": self.tile_mpp, "tiles": self.tiles, "scope": scope,
            }  # fmt: skip


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


def _params_hash(sha: str, slide_mpp: float, opts: CompressOptions, codec: Codec) -> str:
    """What makes two containers the same: slide content and everything that shapes them,
    the codec library's version included (an upgraded libjxl may code other bytes)."""
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
    rows (`compress_band` per band, then `merge_bands`) share it, so they write the same
    container."""

    item: SlideItem
    out: Path
    codec: Codec
    reader: SlideReader  # the closed planning handle: `reopen` and `info` only
    slide_mpp: float
    levels: list[tuple[TileGrid, int, int]]
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


def _check_scorers(opts: CompressOptions) -> None:
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
        params_hash = None
        if out.exists():  # re-run: same content and parameters -> nothing to do
            sha_now = content_sha256(path)
            params_hash = _params_hash(sha_now, slide_mpp, opts, codec)
            if not opts.overwrite and _existing_hash(out) == params_hash:
                return CompressPlan(
                    item, out, codec, reader, slide_mpp, [], Glass((255, 255, 255), 0, 0, ""),
                    None, sha_now, params_hash, skipped=True,
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
    return CompressPlan(
        item, out, codec, reader, slide_mpp, levels, glass, survey, sha_now, params_hash
    )


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
    path = item.path
    out = Path(out)
    check_output(out, overwrite=True, inputs=[path])  # path checks; existing: decided below
    codec = get_codec(opts.codec, opts.quality)
    _check_scorers(opts)
    with output_lock(out):  # one run at a time on this container: a second is refused
        return _compress_locked(item, out, opts, codec, progress_start, t0)


def _compress_locked(
    item: SlideItem,
    out: Path,
    opts: CompressOptions,
    codec: Codec,
    progress_start: ProgressStart | None,
    t0: float,
) -> CompressResult:
    path = item.path
    plan = plan_compress(item, out, opts, codec)
    if plan.skipped:
        return _skipped(out, t0)
    reader, levels, glass, survey = plan.reader, plan.levels, plan.glass, plan.survey
    sha_now, slide_mpp = plan.sha256, plan.slide_mpp
    base = plan.base

    total = int(sum(g.rows * g.cols for g, _, _ in levels))
    advance = progress_start(path.name, total) if progress_start else None
    fidelity = SlideFidelity()
    scorer = MsSsimScorer(fidelity) if opts.ms_ssim else None
    similarity = SimilarityScorer.wanted(fidelity, opts, base.effective_mpp)
    hashing = ThreadPoolExecutor(1, thread_name_prefix="sha256")
    # overlaps the coding (hashlib releases the GIL)
    sha_future = hashing.submit(lambda: sha_now or content_sha256(path))

    try:
        with atomic_path(out) as tmp:
            writer = open_writer(tmp, codec, opts, glass)
            try:
                keep = np.ones((base.rows, base.cols), bool)
                for lv, (grid, _, _) in enumerate(levels):
                    every = np.ones((grid.rows, grid.cols), bool)
                    if lv == 0:
                        todo = plan.level0_todo()
                        if survey is not None:  # ruled out by the survey: glass, not read
                            fidelity.add_dropped_many(survey.deviation[~todo])
                    elif opts.background == "keep":
                        todo = every
                    else:
                        todo = children_kept(keep, grid.rows, grid.cols)
                    stored = np.zeros((grid.rows, grid.cols), bool)
                    blocks = _level_blocks(plan, lv, todo, opts)
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
                                        if similarity:
                                            similarity.add(tile)
                            if advance:
                                advance(int(todo[r0:r1, c0:c1].sum()))
                    if advance:  # tiles of this level ruled out without reading
                        advance(int((~todo).sum()))
                    if lv == 0:
                        if scorer:
                            scorer.flush()
                        if similarity:
                            similarity.finish()
                        if not stored.any():
                            raise _nothing_but_glass(path, glass)
                    keep = stored
                sha = sha_future.result()
                manifest = _manifest(
                    slide_record(path, reader, sha), opts, levels, codec, glass, survey,
                    writer, fidelity,
                )  # fmt: skip
                manifest["params_hash"] = _params_hash(sha, slide_mpp, opts, codec)
                writer.close(manifest)
            except BaseException:
                writer.abort()
                raise
    finally:
        sha_future.cancel()
        hashing.shutdown(wait=True)

    return _result(out, levels, manifest, fidelity, t0)


def _result(
    out: Path,
    levels: list[tuple[TileGrid, int, int]],
    manifest: dict[str, Any],
    fidelity: SlideFidelity,
    t0: float,
) -> CompressResult:
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


def _level_blocks(plan: CompressPlan, lv: int, todo: np.ndarray, opts: CompressOptions) -> Any:
    """(block, coded tiles) of level `lv`'s tiles in `todo`, in order, coded in the worker
    threads (see stream.iter_blocks); close it to release them."""
    grid, width, height = plan.levels[lv]
    coder = LevelCoder(
        grid, width, height, plan.codec, todo, lv == 0, plan.glass, opts.background,
        opts.keeps_pixels,
    )  # fmt: skip
    return iter_blocks(plan.reader.reopen, grid, todo, opts.workers, BLOCK_TILES, process=coder)


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


def _skipped(out: Path, t0: float) -> CompressResult:
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
    record: dict[str, Any],
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
            **record,
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
