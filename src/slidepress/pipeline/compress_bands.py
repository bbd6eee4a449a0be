"""Compress one slide in bands of tile rows and merge the bands into the container a
whole-slide run writes (the Dask region tasks of `slidepress batch`, distributed/regions.py).

A planning task settles the pyramid, glass colour, survey and content key once
(`split_state`); each band task codes its rows of the levels whose tiles lie in one band
(`compress_band`, a part zip); the merge codes the coarse levels above them and writes the
single container with the manifest and fidelity re-added in whole-slide order (`merge_bands`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import zipfile
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics.fidelity import SlideFidelity
from ..store.atomic import atomic_path
from .coding import MsSsimScorer, children_kept
from .compress import (
    BLOCK_TILES,
    CompressOptions,
    CompressPlan,
    CompressResult,
    SimilarityScorer,
    _level_blocks,
    _manifest,
    _nothing_but_glass,
    _params_hash,
    _result,
    open_writer,
)
from .provenance import content_sha256, slide_record


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


def split_state(plan: CompressPlan, opts: CompressOptions) -> dict[str, Any]:
    """What band and merge tasks need from the planning task, as plain data: the content key
    (hashed once), the glass colour and the survey (read once)."""
    sha = plan.sha256 or content_sha256(plan.item.path)
    sv = plan.survey
    return {
        "sha256": sha,
        "params_hash": _params_hash(sha, plan.slide_mpp, opts, plan.codec),
        "glass": dataclasses.asdict(plan.glass),
        "survey": None if sv is None else {
            "deviation": sv.deviation, "level": sv.level, "mpp": sv.mpp,
            "threshold": sv.threshold,
        },
    }  # fmt: skip


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _band_todo(
    plan: CompressPlan, opts: CompressOptions, lv: int, keep: np.ndarray, band: tuple[int, int]
) -> np.ndarray:
    """Level `lv`'s tiles to code in `band`: what a whole-slide run codes in those rows."""
    grid = plan.levels[lv][0]
    r0, r1 = band
    lo, hi = r0 >> lv, (r1 >> lv if r1 < plan.base.rows else grid.rows)
    if lv == 0:
        todo = plan.level0_todo().copy()
    elif opts.background == "keep":
        todo = np.ones((grid.rows, grid.cols), bool)
    else:
        todo = children_kept(keep, grid.rows, grid.cols)
        if todo[:lo].any() or todo[hi:].any():  # region_bands rules this out
            raise RuntimeError(f"level {lv} tiles of band {band} fall outside it")
    todo[:lo] = False
    todo[hi:] = False
    return todo


def compress_band(
    plan: CompressPlan, opts: CompressOptions, band: tuple[int, int], n_levels: int, target: Path
) -> int:
    """Code levels 0..n_levels-1 of the tiles over level-0 rows `band` into a part file at
    `target` (a ZIP written atomically: the tiles in whole-slide order, then the band's
    fidelity terms: per-tile squared errors in order, so the merged PSNR is the whole-slide
    one to the bit). Returns the level-0 tiles stored."""
    fidelity = SlideFidelity()
    scorer = MsSsimScorer(fidelity) if opts.ms_ssim else None
    similarity = SimilarityScorer.wanted(fidelity, opts, plan.base.effective_mpp)
    sse: list[float] = []
    values: list[int] = []
    keep = np.zeros((0, 0), bool)
    with (
        atomic_path(target) as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z,
    ):
        for lv in range(n_levels):
            grid = plan.levels[lv][0]
            todo = _band_todo(plan, opts, lv, keep, band)
            stored = np.zeros((grid.rows, grid.cols), bool)
            blocks = _level_blocks(plan, lv, todo, opts)
            with closing(blocks):
                for _, tiles in blocks:
                    for tile in tiles:
                        if tile.data is not None:
                            z.writestr(f"L{lv}/{tile.row}_{tile.col}", tile.data)
                            stored[tile.row, tile.col] = True
                        if lv == 0:
                            if tile.data is None:
                                fidelity.add_dropped(tile.deviation)
                                continue
                            fidelity.add_stored(tile.sse, tile.values)
                            sse.append(tile.sse)
                            values.append(tile.values)
                            if scorer:
                                scorer.add(tile)
                            if similarity:
                                similarity.add(tile)
            if lv == 0:
                if scorer:
                    scorer.flush()
                if similarity:
                    similarity.flush()
            keep = stored
        f = fidelity
        meta = {
            "band": list(band), "levels": n_levels, "params_hash": plan.params_hash,
            "tiles_dropped": f.tiles_dropped, "max_dropped_deviation": f.max_dropped_deviation,
            "ms_ssim": [f.ms_ssim_sum, f.ms_ssim_weight, f.ms_ssim_tiles],
            "similarity": None if similarity is None else {
                "feat_sum": similarity.feat_sum.tolist(), "emb_sum": similarity.emb_sum,
                "weight": similarity.weight, "tiles": similarity.tiles,
            },
        }  # fmt: skip
        z.writestr("sse.npy", _npy(np.asarray(sse, np.float64)))
        z.writestr("values.npy", _npy(np.asarray(values, np.int64)))
        z.writestr(BAND_META, json.dumps(meta))
    return len(sse)


BAND_META = "band.json"


def read_band_meta(part: Path) -> dict[str, Any]:
    """A part's band.json (written last: a part without it is not one)."""
    with zipfile.ZipFile(part) as z:
        return json.loads(z.read(BAND_META))


def merge_bands(
    plan: CompressPlan, opts: CompressOptions, parts: list[Path], n_levels: int
) -> CompressResult:
    """The single container a whole-slide run writes, from the parts of its bands (in band
    order) plus the levels above `n_levels`, coded here; written atomically."""
    t0 = time.perf_counter()
    path, out, codec = plan.item.path, plan.out, plan.codec
    levels, glass, survey = plan.levels, plan.glass, plan.survey
    fidelity = SlideFidelity()
    if survey is not None:  # ruled out by the survey: glass, not read (as compress_slide)
        fidelity.add_dropped_many(survey.deviation[~plan.level0_todo()])
    similarity = SimilarityScorer.wanted(fidelity, opts, plan.base.effective_mpp)
    zips = [zipfile.ZipFile(p) for p in parts]
    try:
        with atomic_path(out) as tmp:
            writer = open_writer(tmp, codec, opts, glass)
            try:
                keep = np.zeros((0, 0), bool)
                for lv, (grid, _, _) in enumerate(levels):
                    stored = np.zeros((grid.rows, grid.cols), bool)
                    if lv < n_levels:
                        prefix = f"L{lv}/"
                        for z in zips:
                            for info in z.infolist():
                                if info.filename.startswith(prefix):
                                    row, col = map(int, info.filename[len(prefix) :].split("_"))
                                    writer.add_tile(lv, row, col, z.read(info))
                                    stored[row, col] = True
                    else:
                        todo = (
                            np.ones((grid.rows, grid.cols), bool)
                            if opts.background == "keep"
                            else children_kept(keep, grid.rows, grid.cols)
                        )
                        blocks = _level_blocks(plan, lv, todo, opts)
                        with closing(blocks):
                            for _, tiles in blocks:
                                for tile in tiles:
                                    if tile.data is not None:
                                        writer.add_tile(lv, tile.row, tile.col, tile.data)
                                        stored[tile.row, tile.col] = True
                    if lv == 0:
                        _merge_fidelity(fidelity, similarity, zips)
                        if not stored.any():
                            raise _nothing_but_glass(path, glass)
                    keep = stored
                assert plan.sha256 is not None and plan.params_hash is not None
                manifest = _manifest(
                    slide_record(path, plan.reader, plan.sha256), opts, levels, codec, glass,
                    survey, writer, fidelity,
                )  # fmt: skip
                manifest["params_hash"] = plan.params_hash
                writer.close(manifest)
            except BaseException:
                writer.abort()
                raise
    finally:
        for z in zips:
            z.close()
    return _result(out, levels, manifest, fidelity, t0)


def _merge_fidelity(
    fidelity: SlideFidelity, similarity: SimilarityScorer | None, zips: list[zipfile.ZipFile]
) -> None:
    """Level-0 fidelity of the bands, in band order: per-tile squared errors added in the
    whole-slide order (PSNR to the bit), the weighted MS-SSIM / similarity sums added."""
    for z in zips:
        meta = json.loads(z.read(BAND_META))
        sse = np.load(io.BytesIO(z.read("sse.npy")), allow_pickle=False)
        values = np.load(io.BytesIO(z.read("values.npy")), allow_pickle=False)
        for e, v in zip(sse.tolist(), values.tolist(), strict=True):
            fidelity.add_stored(e, v)
        fidelity.tiles_dropped += meta["tiles_dropped"]
        fidelity.max_dropped_deviation = max(
            fidelity.max_dropped_deviation, meta["max_dropped_deviation"]
        )
        ms_sum, ms_weight, ms_tiles = meta["ms_ssim"]
        fidelity.ms_ssim_sum += ms_sum
        fidelity.ms_ssim_weight += ms_weight
        fidelity.ms_ssim_tiles += ms_tiles
        sim = meta.get("similarity")
        if similarity is not None and sim:
            similarity.feat_sum += np.asarray(sim["feat_sum"])
            similarity.emb_sum += sim["emb_sum"]
            similarity.weight += sim["weight"]
            similarity.tiles += sim["tiles"]
    if similarity is not None:
        similarity.finish()
