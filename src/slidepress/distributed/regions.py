"""One huge slide as many Dask tasks: bands of rows coded apart, merged into the single output
a whole-slide run writes (encode: the grid file(s); compress: the `.spz` container).

Three jobs per command, each a `pipeline.batch` job run through `pipeline.batch.run_slide` (so
a bad slide is a `failed` outcome like any other, and the work is the pipeline's own):

- `Split*Job`: a slide under the size threshold is processed whole, as the plain job does.
  Above it, the slide is planned once (encode: grid, tissue cells, content key,
  `plan_encode`; compress: pyramid, glass colour, survey, content key, `plan_compress`) and
  the job records `split` (the key, the bands and what the bands need) instead.
- `Region*Job`: one band of rows, saved atomically under
  `OUTDIR/.slidepress-parts/STEM.KEY/` (encode: the kept cells' features, `rows-R0-R1.npz`;
  compress: the coded tiles of the levels fine enough to split, in whole-slide order, and the
  band's fidelity terms, `tiles-R0-R1.zip`). A band whose part exists is not redone: an
  interrupted run resumes band by band.
- `Merge*Job`: the parts put together and written by the writer of a whole-slide run
  (`write_encoded`; `merge_bands`, which also codes the coarse levels whose tiles span
  bands), atomically, then the parts removed.

Bands start at multiples of the read-block size, so each band reads exactly the blocks a
whole-slide run reads and the merged output equals the whole-slide output (tested: grids
array-wise, containers entry by entry with identical tile bytes and the same PSNR to the bit).
The parts folder is keyed by the content key: a changed slide or parameter never mixes parts.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..codecs import get_codec
from ..errors import SlideError
from ..pipeline.batch import CompressJob, EncodeJob, Job, Outcome
from ..pipeline.compress import plan_compress
from ..pipeline.compress_bands import (
    compress_band,
    merge_bands,
    read_band_meta,
    region_bands,
    split_state,
)
from ..pipeline.encode import EncodeResult, encode_rows, plan_encode, write_encoded
from ..pipeline.items import SlideItem
from ..progress import ProgressStart
from ..store.atomic import atomic_path, check_output

PARTS = ".slidepress-parts"
SPLIT = "split"  # the status of a slide handed on to region tasks (never in the report)


def row_bands(rows: int, band_rows: int, block_cells: int) -> list[tuple[int, int]]:
    """[r0, r1) bands covering `rows`, each a multiple of `block_cells` rows (except the last)."""
    band = max(block_cells, band_rows - band_rows % block_cells)
    return [(r, min(r + band, rows)) for r in range(0, rows, band)]


def parts_dir(out_dir: str | Path, stem: str, params_hash: str) -> Path:
    return Path(out_dir) / PARTS / f"{stem}.{params_hash[:16]}"


def part_path(parts: Path, band: tuple[int, int]) -> Path:
    return parts / f"rows-{band[0]:06d}-{band[1]:06d}.npz"


def level0_pixels(item: SlideItem, reader: str | None) -> int:
    """Level-0 area of a slide (opening it only to read its header)."""
    with item.open(reader) as r:
        w, h = r.info.dimensions
    return int(w) * int(h)


def tiles_part_path(parts: Path, band: tuple[int, int]) -> Path:
    return parts / f"tiles-{band[0]:06d}-{band[1]:06d}.zip"


def _like(job: Job, cls: type, **extra: Any) -> Any:
    if isinstance(job, CompressJob):
        return cls(options=dict(job.options), output=job.output, **extra)
    assert isinstance(job, EncodeJob)
    return cls(encoder=job.encoder, device=job.device, options=dict(job.options), **extra)


@dataclass
class SplitEncodeJob(EncodeJob):
    """Encode a slide whole, or (above `region_px` level-0 pixels, more than one band) plan it
    and leave `split` set for the region tasks."""

    region_px: float = 0.0  # 0: never split
    band_rows: int = 64
    split: dict[str, Any] | None = field(default=None, init=False)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        opts = self._opts
        if not self.region_px or level0_pixels(item, opts.reader) <= self.region_px:
            return super().run(item, out_dir, progress)
        if self._encoder is None:
            self.prepare()
        plan = plan_encode(item, out_dir, self._encoder, opts)
        if plan.skipped:
            res = EncodeResult(str(item.path), plan.outputs, plan.previews, skipped=True)
            return self.outcome(item, res)
        bands = row_bands(plan.grid.rows, self.band_rows, opts.block_cells)
        if len(bands) == 1:  # one band: no gain in splitting
            feats = encode_rows(plan, self._encoder, opts)
            return self.outcome(item, write_encoded(plan, feats, self._encoder, opts))
        self.split = {
            "sha256": plan.sha256,
            "params_hash": plan.params_hash,
            "rows": plan.grid.rows,
            "cells": plan.cells_kept,
            "bands": [list(b) for b in bands],
        }
        return Outcome(item.name, str(item.path), SPLIT, units="cells", count=plan.cells_kept)


@dataclass
class RegionEncodeJob(EncodeJob):
    """Encode the kept cells of one band and save them as a part."""

    split: dict[str, Any] = field(default_factory=dict)
    band: tuple[int, int] = (0, 0)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        band = (int(self.band[0]), int(self.band[1]))
        parts = parts_dir(out_dir, item.stem, self.split["params_hash"])
        target = part_path(parts, band)
        if target.exists():  # done by an earlier (interrupted) run or a retried task
            return Outcome(item.name, str(item.path), "skipped", units="cells")
        if self._encoder is None:
            self.prepare()
        plan = plan_encode(item, out_dir, self._encoder, self._opts, sha256=self.split["sha256"])
        if plan.skipped:  # the whole result is already there
            return Outcome(item.name, str(item.path), "skipped", units="cells")
        _same_plan(plan, self.split, item)
        feats = encode_rows(plan, self._encoder, self._opts, band)
        parts.mkdir(parents=True, exist_ok=True)
        arrays = {f"f{i}": f for i, f in enumerate(feats)}
        with atomic_path(target) as tmp:
            np.savez(tmp, keep=plan.keep[band[0] : band[1]], **arrays)
        n = int(plan.keep[band[0] : band[1]].sum())
        return Outcome(item.name, str(item.path), "done", units="cells", count=n)


@dataclass
class MergeEncodeJob(EncodeJob):
    """Put the parts of every band together and write the slide's grid file(s)."""

    split: dict[str, Any] = field(default_factory=dict)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        if self._encoder is None:
            self.prepare()
        opts = self._opts
        plan = plan_encode(item, out_dir, self._encoder, opts, sha256=self.split["sha256"])
        parts = parts_dir(out_dir, item.stem, self.split["params_hash"])
        if plan.skipped:
            _remove_parts(parts)
            res = EncodeResult(str(item.path), plan.outputs, plan.previews, skipped=True)
            return self.outcome(item, res)
        _same_plan(plan, self.split, item)
        grid = plan.grid
        feats: list[np.ndarray] = []
        for band in self.split["bands"]:
            r0, r1 = int(band[0]), int(band[1])
            p = part_path(parts, (r0, r1))
            if not p.exists():
                raise SlideError(f"{item.name}: region part {p.name} is missing; run again")
            with np.load(p) as z:
                if not np.array_equal(z["keep"], plan.keep[r0:r1]):
                    raise SlideError(f"{item.name}: region part {p.name} is stale; run again")
                for i in range(len(plan.variants)):
                    if f"f{i}" not in z.files:
                        continue  # no kept cell in this band
                    f = z[f"f{i}"]
                    if not feats:
                        c = f.shape[2]
                        feats = [np.zeros((grid.rows, grid.cols, c), np.float32)
                                 for _ in plan.variants]  # fmt: skip
                    feats[i][r0:r1] = f
        res = write_encoded(plan, feats, self._encoder, opts)
        _remove_parts(parts)
        return self.outcome(item, res)


def _same_plan(plan: Any, split: dict[str, Any], item: SlideItem) -> None:
    if plan.params_hash != split["params_hash"] or plan.grid.rows != split["rows"]:
        raise SlideError(f"{item.name}: the slide changed during the run; run again")


def _remove_parts(parts: Path) -> None:
    shutil.rmtree(parts, ignore_errors=True)
    try:
        parts.parent.rmdir()  # the shared .slidepress-parts folder, once empty
    except OSError:
        pass


@dataclass
class SplitCompressJob(CompressJob):
    """Compress a slide whole, or (above `region_px` level-0 pixels, more than one band) plan
    it and leave `split` set for the region tasks."""

    region_px: float = 0.0  # 0: never split
    band_rows: int = 64  # level-0 tile rows per band (rounded down to a multiple of 4)
    split: dict[str, Any] | None = field(default=None, init=False)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        opts = self._opts
        if not self.region_px or level0_pixels(item, opts.reader) <= self.region_px:
            return super().run(item, out_dir, progress)
        from ..pipeline.compress import _check_scorers, _skipped

        out = self.output_for(item, out_dir)
        check_output(out, overwrite=True, inputs=[item.path])
        codec = get_codec(opts.codec, opts.quality)
        _check_scorers(opts)
        plan = plan_compress(item, out, opts, codec)  # OutputExistsError when in the way
        if plan.skipped:
            return self.outcome(item, _skipped(out, time.perf_counter()))
        bands, n_levels = region_bands([g.rows for g, _, _ in plan.levels], self.band_rows)
        if len(bands) == 1:  # one band: no gain in splitting
            return super().run(item, out_dir, progress)
        self.split = {
            **split_state(plan, opts),
            "rows": plan.base.rows,
            "levels_in_bands": n_levels,
            "bands": [list(b) for b in bands],
        }
        n = int(plan.level0_todo().sum())
        return Outcome(item.name, str(item.path), SPLIT, units="tiles", count=n)


def _compress_plan(job: CompressJob, item: SlideItem, out_dir: Path, split: dict) -> Any:
    opts = job._opts
    codec = get_codec(opts.codec, opts.quality)
    plan = plan_compress(item, job.output_for(item, out_dir), opts, codec, given=split)
    if plan.base.rows != split["rows"]:
        raise SlideError(f"{item.name}: the slide changed during the run; run again")
    return plan


@dataclass
class RegionCompressJob(CompressJob):
    """Code the tiles of one band (the levels fine enough to split) and save them as a part."""

    split: dict[str, Any] = field(default_factory=dict)
    band: tuple[int, int] = (0, 0)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        band = (int(self.band[0]), int(self.band[1]))
        parts = parts_dir(out_dir, item.stem, self.split["params_hash"])
        target = tiles_part_path(parts, band)
        if target.exists():  # done by an earlier (interrupted) run or a retried task
            return Outcome(item.name, str(item.path), "skipped", units="tiles")
        plan = _compress_plan(self, item, out_dir, self.split)
        parts.mkdir(parents=True, exist_ok=True)
        n = compress_band(plan, self._opts, band, int(self.split["levels_in_bands"]), target)
        return Outcome(item.name, str(item.path), "done", units="tiles", count=n)


@dataclass
class MergeCompressJob(CompressJob):
    """Put the bands' parts together (and code the coarse levels) into the slide's container."""

    split: dict[str, Any] = field(default_factory=dict)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        plan = _compress_plan(self, item, out_dir, self.split)
        parts = parts_dir(out_dir, item.stem, self.split["params_hash"])
        files = []
        for band in self.split["bands"]:
            p = tiles_part_path(parts, (int(band[0]), int(band[1])))
            if not p.exists():
                raise SlideError(f"{item.name}: region part {p.name} is missing; run again")
            if read_band_meta(p).get("params_hash") != self.split["params_hash"]:
                raise SlideError(f"{item.name}: region part {p.name} is stale; run again")
            files.append(p)
        res = merge_bands(plan, self._opts, files, int(self.split["levels_in_bands"]))
        _remove_parts(parts)
        return self.outcome(item, res)


def region_job(job: Job, split: dict[str, Any], band: list[int]) -> Job:
    cls = RegionCompressJob if isinstance(job, CompressJob) else RegionEncodeJob
    return _like(job, cls, split=split, band=(int(band[0]), int(band[1])))


def merge_job(job: Job, split: dict[str, Any]) -> Job:
    cls = MergeCompressJob if isinstance(job, CompressJob) else MergeEncodeJob
    return _like(job, cls, split=split)


def split_job(job: Job, region_px: float, band_rows: int) -> SplitEncodeJob | SplitCompressJob:
    cls = SplitCompressJob if isinstance(job, CompressJob) else SplitEncodeJob
    return _like(job, cls, region_px=region_px, band_rows=band_rows)
