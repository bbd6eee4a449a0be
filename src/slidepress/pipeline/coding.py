"""The one level coder of `compress`: a slide's pyramid, level by level, into a tile sink.

`code_levels` runs the levels of a `CompressPlan` (compress.py) for a whole-slide run, for one
band of rows (compress_bands.py, the Dask region tasks) and for the coarse levels the merge of
the bands codes. Per level it settles the tiles to code (`level_todo`: on level 0 every tile,
or those the glass survey does not rule out; on a coarser level those over a stored finer
tile, or all with `--background keep`), reads and codes them in worker threads (`LevelCoder`,
through stream.iter_blocks) and hands the coded bytes, in order, to a `TileSink`: the
container writer or a band's part file. Level 0's tiles also go to a `Level0Tally`.

Level 0: each tile is tested for glass on its own pixels (slide/glass.py), coded, decoded
again and compared with the original in the same worker pass (the whole-slide fidelity);
coarser levels are only coded. Opt-in MS-SSIM, feature and embedding similarity of the stored
tiles are scored in batches on the calling thread (metrics/similarity.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..codecs import Codec
from ..errors import UsageError
from ..metrics.featsim import DEPTHS
from ..metrics.fidelity import SlideFidelity, squared_error
from ..metrics.similarity import SimilarityScorer, SimilaritySums
from ..slide.glass import Glass, box_deviation, box_factor
from ..tiling import TileGrid
from .stream import iter_blocks

if TYPE_CHECKING:
    from .compress import CompressOptions, CompressPlan

BLOCK_TILES = 4  # blocks of up to 4 x 4 tiles per worker task
SCORE_BATCH = 32  # stored tiles per MS-SSIM / similarity batch
SIMILARITY_SCOPE = "stored level-0 tiles, mean weighted by their tissue pixels"


class TileSink(Protocol):
    """Where coded tiles go: a `ContainerWriter`, or a band's part (compress_bands.py)."""

    def add_tile(self, level: int, row: int, col: int, data: bytes) -> None: ...


@dataclass
class CodedTile:
    """What a worker reports for one tile: coded bytes (None: left out as glass) and scores."""

    row: int
    col: int
    data: bytes | None
    deviation: int = 0
    sse: float = 0.0
    values: int = 0
    original: np.ndarray | None = None  # kept only when a scorer wants the pixels
    decoded: np.ndarray | None = None


def children_kept(keep: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tiles of the next (2x coarser) level that cover at least one kept tile."""
    out = np.zeros((rows, cols), bool)
    r, c = np.nonzero(keep)
    out[np.minimum(r // 2, rows - 1), np.minimum(c // 2, cols - 1)] = True
    return out


class LevelCoder:
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
        keep_pixels: bool,
    ):
        self.grid, self.width, self.height = grid, width, height
        self.codec, self.todo, self.level0 = codec, todo, level0
        self.glass, self.policy = glass, policy
        self.keep_pixels = keep_pixels
        self.factor = box_factor(grid.effective_mpp)

    def __call__(self, block: tuple[int, int, int, int], pixels: np.ndarray) -> list[CodedTile]:
        r0, r1, c0, c1 = block
        t = self.grid.spec.patch_size
        tiles = self.grid.cut_patches(pixels, r0, r1, c0, c1)
        cells = [
            (r0 + i, c0 + j, np.ascontiguousarray(tiles[i, j]))
            for i in range(r1 - r0)
            for j in range(c1 - c0)
            if self.todo[r0 + i, c0 + j]  # else: glass by the survey / under no stored tile
        ]
        if not self.level0:
            blobs = self.codec.encode_batch([tile for _, _, tile in cells])
            return [CodedTile(r, c, d) for (r, c, _), d in zip(cells, blobs, strict=True)]
        # level 0: test for glass, then code and decode the rest as one batch
        out, coded = [], []
        for r, c, tile in cells:
            vh, vw = min(t, self.height - r * t), min(t, self.width - c * t)
            valid = tile[:vh, :vw] if (vh, vw) != (t, t) else tile
            boxes = box_deviation(valid, self.glass, self.factor)
            deviation = int(boxes.max())
            if self.policy != "keep" and deviation <= self.glass.threshold:
                out.append(CodedTile(r, c, None, deviation))
            else:
                coded.append((r, c, tile, valid, boxes, deviation))
        blobs = self.codec.encode_batch([x[2] for x in coded])
        # decoded again: the whole-slide fidelity, and a check of the codec's round trip
        decoded = self.codec.decode_batch(blobs, shape=(t, t, 3)) if coded else []
        for (r, c, _, valid, boxes, deviation), data, dec in zip(
            coded, blobs, decoded, strict=True
        ):
            restored = dec[: valid.shape[0], : valid.shape[1]]
            mask = boxes > self.glass.threshold
            sse, values = squared_error(valid, restored, mask, self.factor)
            if self.keep_pixels:
                out.append(CodedTile(r, c, data, deviation, sse, values, valid.copy(), restored))
            else:
                out.append(CodedTile(r, c, data, deviation, sse, values))
        return out


def level_todo(
    plan: CompressPlan,
    opts: CompressOptions,
    lv: int,
    keep: np.ndarray | None,
    band: tuple[int, int] | None = None,
) -> np.ndarray:
    """Level `lv`'s tiles to code, given `keep` (the tiles stored on level `lv` - 1); with
    `band` (level-0 rows [r0, r1)) only those over it: what a whole-slide run codes there."""
    grid = plan.levels[lv][0]
    if lv == 0:
        todo = plan.level0_todo()
    elif opts.background == "keep":
        todo = np.ones((grid.rows, grid.cols), bool)
    else:
        assert keep is not None
        todo = children_kept(keep, grid.rows, grid.cols)
    if band is None:
        return todo
    r0, r1 = band
    lo, hi = r0 >> lv, (r1 >> lv if r1 < plan.base.rows else grid.rows)
    if lv and opts.background != "keep" and (todo[:lo].any() or todo[hi:].any()):
        raise RuntimeError(f"level {lv} tiles of band {band} fall outside it")  # region_bands
    todo = todo.copy()
    todo[:lo] = False
    todo[hi:] = False
    return todo


def code_levels(
    plan: CompressPlan,
    opts: CompressOptions,
    sink: TileSink,
    levels: range,
    *,
    tally: Level0Tally | None = None,
    keep: np.ndarray | None = None,
    band: tuple[int, int] | None = None,
    advance: Callable[[int], Any] | None = None,
) -> np.ndarray:
    """Code the consecutive `levels` of `plan`'s pyramid into `sink`, level 0's tiles counted
    in `tally`; `keep`: the tiles stored on the level below the first (when it is not 0);
    `band`: only the tiles over those level-0 rows. Returns the last level's stored tiles."""
    for lv in levels:
        grid, width, height = plan.levels[lv]
        todo = level_todo(plan, opts, lv, keep, band)
        coder = LevelCoder(
            grid, width, height, plan.codec, todo, lv == 0, plan.glass, opts.background,
            opts.keeps_pixels,
        )  # fmt: skip
        stored = np.zeros((grid.rows, grid.cols), bool)
        blocks = iter_blocks(
            plan.reader.reopen, grid, todo, opts.workers, BLOCK_TILES, process=coder
        )
        with closing(blocks):
            for (r0, r1, c0, c1), tiles in blocks:
                for tile in tiles:
                    if tile.data is not None:
                        sink.add_tile(lv, tile.row, tile.col, tile.data)
                        stored[tile.row, tile.col] = True
                    if lv == 0 and tally is not None:
                        tally.add(tile)
                if advance:
                    advance(int(todo[r0:r1, c0:c1].sum()))
        if advance:  # tiles of this level ruled out without reading
            advance(int((~todo).sum()))
        if lv == 0 and tally is not None:
            tally.flush()
        keep = stored
    assert keep is not None
    return keep


class Level0Tally:
    """Level 0's accounts of a slide, or of a band of it: the whole-slide fidelity (PSNR over
    every tissue pixel, tiles left out as glass) and, when asked for, MS-SSIM (kept in the
    fidelity), feature and embedding similarity (`sums`) of the stored tiles, each weighted by
    its tissue pixels. A band's tally keeps its per-tile terms and `merge`s into the slide's
    exactly (its PSNR is the whole-slide run's to the bit)."""

    def __init__(
        self,
        fidelity: SlideFidelity | None = None,
        sums: SimilaritySums | None = None,
        *,
        ms_ssim: SimilarityScorer | None = None,
        networks: SimilarityScorer | None = None,
        tile_mpp: float | None = None,
    ):
        self.fidelity = fidelity if fidelity is not None else SlideFidelity()
        self.sums = sums
        self.ms_ssim, self.networks, self.tile_mpp = ms_ssim, networks, tile_mpp
        self._ms: list[CodedTile] = []
        self._sim: list[CodedTile] = []

    @classmethod
    def for_options(
        cls, opts: CompressOptions, tile_mpp: float, *, part: bool = False
    ) -> Level0Tally:
        """The scorers the options ask for (torch and the networks load here); `part`: a
        band's tally, keeping the per-tile terms its merge needs."""
        fidelity = SlideFidelity(terms=[] if part else None)
        ms = nets = None
        if opts.ms_ssim or opts.feature_similarity or opts.embedding_similarity:
            import torch

            torch.set_num_threads(1)  # small batches next to the coding threads: 2 were ~5x
            # slower than 1 on a busy machine
        if opts.ms_ssim:
            ms = SimilarityScorer(structural=True)
        if opts.feature_similarity or opts.embedding_similarity:
            nets = SimilarityScorer(featsim=opts.feature_similarity,
                                    encoder=opts.embedding_similarity)  # fmt: skip
        sums = SimilaritySums() if nets else None
        return cls(fidelity, sums, ms_ssim=ms, networks=nets, tile_mpp=tile_mpp)

    def add(self, tile: CodedTile) -> None:
        if tile.data is None:
            self.fidelity.add_dropped(tile.deviation)
            return
        self.fidelity.add_stored(tile.sse, tile.values)
        if tile.original is None:
            return
        if self.ms_ssim:
            self._ms.append(tile)
            if len(self._ms) >= SCORE_BATCH:
                self._flush_ms_ssim()
        if self.networks and tile.values > 0:  # no tissue box: no weight
            self._sim.append(tile)
            if len(self._sim) >= SCORE_BATCH:
                self._flush_similarity()

    def flush(self) -> None:
        self._flush_ms_ssim()
        self._flush_similarity()

    def _flush_ms_ssim(self) -> None:
        if not self._ms:
            return
        assert self.ms_ssim is not None
        batch, self._ms = self._ms, []
        scores = self.ms_ssim.score([t.original for t in batch], [t.decoded for t in batch])
        assert scores.pixels is not None
        self.fidelity.add_ms_ssim(scores.pixels.ms_ssim, _weights(batch))

    def _flush_similarity(self) -> None:
        if not self._sim:
            return
        assert self.networks is not None and self.sums is not None
        batch, self._sim = self._sim, []
        scores = self.networks.score([t.original for t in batch], [t.decoded for t in batch],
                                     tile_mpp=self.tile_mpp)  # fmt: skip
        self.sums.add(scores, _weights(batch))

    def merge(self, part: Level0Tally) -> None:
        """Add a band's totals (bands merged in whole-slide order)."""
        self.fidelity.merge(part.fidelity)
        if self.sums is not None and part.sums is not None:
            self.sums.merge(part.sums)

    def finish(self) -> None:
        """Score what is left and write the similarity records into `fidelity.extra`."""
        self.flush()
        nets, sums = self.networks, self.sums
        if nets is None or sums is None:
            return
        if nets.featsim:
            per = sums.feature_means()
            fs = nets.featsim
            per_depth = (
                dict.fromkeys(DEPTHS)
                if per is None
                else {d: float(v) for d, v in zip(DEPTHS, per, strict=True)}
            )
            self.fidelity.extra["feature_similarity"] = {
                "mean": float(per.mean()) if per is not None else None,
                "per_depth": per_depth,
                "tiles": sums.tiles, "scope": SIMILARITY_SCOPE,
                "weights": {"name": fs.name, "sha256": fs.weights_hash},
            }  # fmt: skip
        if nets.encoder:
            e = nets.encoder.describe()
            self.fidelity.extra["embedding_similarity"] = {
                "mean": sums.embedding_mean(),
                "encoder": e.get("name"), "weights_sha256": e.get("weights_hash"),
                "tile_mpp": self.tile_mpp, "tiles": sums.tiles, "scope": SIMILARITY_SCOPE,
            }  # fmt: skip


def _weights(batch: list[CodedTile]) -> np.ndarray:
    """Each tile's weight: its tissue pixels."""
    return np.array([t.values / 3 for t in batch], np.float64)


def check_torch() -> None:
    try:
        import pytorch_msssim  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise UsageError(
            "--ms-ssim needs the torch extra: pip install 'slidepress[torch]'"
        ) from None
