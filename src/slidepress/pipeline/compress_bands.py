"""Compress one slide in bands of tile rows and merge the bands into the container a
whole-slide run writes (the Dask region tasks of `slidepress batch`, distributed/regions.py).

A planning task settles the pyramid, glass colour, survey and content key once
(`plan_compress`, then `CompressPlan.split_state`); each band task codes its rows of the
levels whose tiles lie in one band (`compress_band`: the level coder of coding.py writing to
a `BandPart`); the merge copies the bands' tiles, codes the coarse levels above them and
writes the single container with the manifest and fidelity of a whole-slide run
(`merge_bands`, through compress.py's `write_container`). `CompressBands` is how the batch
runner's `compress` job does it (`CompressJob.bands()`).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..codecs import get_codec
from ..errors import SlideError
from ..metrics.fidelity import SlideFidelity
from ..metrics.similarity import SimilaritySums
from ..store.atomic import atomic_path, check_output
from .batch import SPLIT, Bands, Outcome
from .coding import BLOCK_TILES, Level0Tally, TileSink, code_levels
from .compress import (
    CompressOptions,
    CompressPlan,
    CompressResult,
    check_scorers,
    plan_compress,
    skipped_result,
    write_container,
)
from .items import SlideItem

if TYPE_CHECKING:
    from ..progress import ProgressStart
    from .batch import CompressJob

BAND_META = "band.json"


def region_bands(level_rows: list[int], band_rows: int) -> tuple[list[tuple[int, int]], int]:
    """Bands [r0, r1) of level-0 tile rows, and how many pyramid levels are coded in them.

    Bands are multiples of BLOCK_TILES rows, so each reads the same blocks (the same pixels)
    as a whole-slide run. Level k is coded in the bands when every band boundary R is a
    multiple of BLOCK_TILES * 2**k and R / 2**k is a row of level k: then each of its tiles
    lies over tiles of one band only (`children_kept`: row r of level k-1 feeds row r // 2,
    the last rows clamped into the last row) and its blocks are the whole-slide blocks. The
    levels above (each 4x less work than the one below) are coded by the merge."""
    rows0 = level_rows[0]
    band = max(BLOCK_TILES, band_rows - band_rows % BLOCK_TILES)
    bands = [(r, min(r + band, rows0)) for r in range(0, rows0, band)]
    bounds = [r0 for r0, _ in bands[1:]]
    k = 1
    while k < len(level_rows) and all(
        r % (BLOCK_TILES << k) == 0 and (r >> k) < level_rows[k] for r in bounds
    ):
        k += 1
    return bands, k


class BandPart:
    """A band's part file (a ZIP): its coded tiles as `L{level}/{row}_{col}` in whole-slide
    order (a `TileSink`), then level 0's accounts: the per-tile squared errors and tissue
    values in order (`sse.npy`, `values.npy`) and the other totals (`band.json`, last: a part
    without it is not one)."""

    def __init__(self, z: zipfile.ZipFile):
        self.zip = z

    def add_tile(self, level: int, row: int, col: int, data: bytes) -> None:
        self.zip.writestr(f"L{level}/{row}_{col}", data)

    def write_tally(self, tally: Level0Tally, meta: dict[str, Any]) -> None:
        f = tally.fidelity
        terms = f.terms or []
        meta = {
            **meta,
            "tiles_dropped": f.tiles_dropped, "max_dropped_deviation": f.max_dropped_deviation,
            "ms_ssim": [f.ms_ssim_sum, f.ms_ssim_weight, f.ms_ssim_tiles],
            "similarity": None if tally.sums is None else tally.sums.to_dict(),
        }  # fmt: skip
        self.zip.writestr("sse.npy", _npy(np.asarray([e for e, _ in terms], np.float64)))
        self.zip.writestr("values.npy", _npy(np.asarray([v for _, v in terms], np.int64)))
        self.zip.writestr(BAND_META, json.dumps(meta))

    def tiles(self, level: int) -> list[tuple[int, int, bytes]]:
        """(row, col, coded bytes) of one level, in order."""
        prefix = f"L{level}/"
        out = []
        for info in self.zip.infolist():
            if info.filename.startswith(prefix):
                row, col = map(int, info.filename[len(prefix) :].split("_"))
                out.append((row, col, self.zip.read(info)))
        return out

    def tally(self) -> Level0Tally:
        """The band's level-0 accounts, to merge into the slide's."""
        meta = json.loads(self.zip.read(BAND_META))
        sse = np.load(io.BytesIO(self.zip.read("sse.npy")), allow_pickle=False)
        values = np.load(io.BytesIO(self.zip.read("values.npy")), allow_pickle=False)
        ms_sum, ms_weight, ms_tiles = meta["ms_ssim"]
        fidelity = SlideFidelity(
            tiles_dropped=meta["tiles_dropped"],
            max_dropped_deviation=meta["max_dropped_deviation"],
            ms_ssim_sum=ms_sum, ms_ssim_weight=ms_weight, ms_ssim_tiles=ms_tiles,
            terms=list(zip(sse.tolist(), values.tolist(), strict=True)),
        )  # fmt: skip
        sim = meta.get("similarity")
        return Level0Tally(fidelity, SimilaritySums.from_dict(sim) if sim else None)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def compress_band(
    plan: CompressPlan, opts: CompressOptions, band: tuple[int, int], n_levels: int, target: Path
) -> int:
    """Code levels 0..n_levels-1 of the tiles over level-0 rows `band` into a part file at
    `target` (written atomically; see `BandPart`), so the merged PSNR is the whole-slide one
    to the bit. Returns the level-0 tiles stored."""
    tally = Level0Tally.for_options(opts, plan.base.effective_mpp, part=True)
    with (
        atomic_path(target) as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z,
    ):
        part = BandPart(z)
        code_levels(plan, opts, part, range(n_levels), tally=tally, band=band)
        meta = {"band": list(band), "levels": n_levels, "params_hash": plan.params_hash}
        part.write_tally(tally, meta)
    return tally.fidelity.tiles_stored


def read_band_meta(part: Path) -> dict[str, Any]:
    """A part's band.json (written last: a part without it is not one)."""
    with zipfile.ZipFile(part) as z:
        return json.loads(z.read(BAND_META))


def merge_bands(
    plan: CompressPlan, opts: CompressOptions, parts: list[Path], n_levels: int
) -> CompressResult:
    """The single container a whole-slide run writes, from the parts of its bands (in band
    order) plus the levels above `n_levels`, coded here; written atomically."""
    assert plan.sha256 is not None and plan.params_hash is not None
    sha = plan.sha256
    with ExitStack() as stack:
        bands = [BandPart(stack.enter_context(zipfile.ZipFile(p))) for p in parts]

        def fill(writer: TileSink, tally: Level0Tally) -> None:
            keep = np.zeros((0, 0), bool)
            for lv in range(n_levels):
                grid = plan.levels[lv][0]
                keep = np.zeros((grid.rows, grid.cols), bool)
                for band in bands:
                    for row, col, data in band.tiles(lv):
                        writer.add_tile(lv, row, col, data)
                        keep[row, col] = True
            for band in bands:  # level 0's accounts, in whole-slide order
                tally.merge(band.tally())
            code_levels(plan, opts, writer, range(n_levels, len(plan.levels)), keep=keep)

        return write_container(plan, opts, fill, lambda: sha, time.perf_counter())


class CompressBands(Bands):
    """`compress` as bands of level-0 tile rows (see the module docstring)."""

    units = "tiles"
    part = "tiles-{0:06d}-{1:06d}.zip"

    def __init__(self, job: CompressJob, opts: CompressOptions):
        self.job, self.opts = job, opts
        self.reader = opts.reader

    def plan(
        self, item: SlideItem, out_dir: Path, band_rows: int, progress: ProgressStart | None
    ) -> tuple[Outcome, dict[str, Any] | None]:
        opts = self.opts
        out = self.job.output_for(item, out_dir)
        check_output(out, overwrite=True, inputs=[item.path])
        codec = get_codec(opts.codec, opts.quality)
        check_scorers(opts)
        plan = plan_compress(item, out, opts, codec)  # OutputExistsError when in the way
        if plan.skipped:
            return self.job.outcome(item, skipped_result(out, time.perf_counter())), None
        bands, n_levels = region_bands([g.rows for g, _, _ in plan.levels], band_rows)
        if len(bands) == 1:  # one band: no gain in splitting
            return self.job.run(item, out_dir, progress), None
        split = {
            **plan.split_state(opts),
            "rows": plan.base.rows,
            "levels_in_bands": n_levels,
            "bands": [list(b) for b in bands],
        }
        n = int(plan.level0_todo().sum())
        return Outcome(item.name, str(item.path), SPLIT, units="tiles", count=n), split

    def _plan(self, item: SlideItem, out_dir: Path, split: dict[str, Any]) -> CompressPlan:
        opts = self.opts
        codec = get_codec(opts.codec, opts.quality)
        out = self.job.output_for(item, out_dir)
        plan = plan_compress(item, out, opts, codec, given=split)
        if plan.base.rows != split["rows"]:
            raise SlideError(f"{item.name}: the slide changed during the run; run again")
        return plan

    def code(
        self, item: SlideItem, out_dir: Path, split: dict[str, Any], band: tuple[int, int],
        target: Path,
    ) -> int | None:  # fmt: skip
        plan = self._plan(item, out_dir, split)
        target.parent.mkdir(parents=True, exist_ok=True)
        return compress_band(plan, self.opts, band, int(split["levels_in_bands"]), target)

    def merge(
        self, item: SlideItem, out_dir: Path, split: dict[str, Any], parts: list[Path]
    ) -> Outcome:
        plan = self._plan(item, out_dir, split)
        self.require_parts(item, parts)
        for p in parts:
            if read_band_meta(p).get("params_hash") != split["params_hash"]:
                raise SlideError(f"{item.name}: region part {p.name} is stale; run again")
        res = merge_bands(plan, self.opts, parts, int(split["levels_in_bands"]))
        return self.job.outcome(item, res)
