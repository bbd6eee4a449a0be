"""Encode one slide in bands of grid rows and merge the bands into the grid file(s) a
whole-slide run writes (the Dask region tasks of `slidepress batch`, distributed/regions.py).

The planning task settles the grid, the tissue cells and the content key once (`plan_encode`);
each band task encodes the kept cells of its rows (`encode_rows`) into a part,
`rows-R0-R1.npz` (the band's `keep` and one feature array per variant); the merge puts the
bands' features together and writes the grids with `write_encoded`. Bands start at multiples
of the read-block size, so each reads exactly the blocks a whole-slide run reads and the
merged grids equal the whole-slide ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SlideError
from ..store.atomic import atomic_path
from .batch import SPLIT, Bands, Outcome
from .encode import EncodeOptions, EncodePlan, EncodeResult, encode_rows, plan_encode, write_encoded
from .items import SlideItem

if TYPE_CHECKING:
    from ..encoders import Encoder
    from ..progress import ProgressStart
    from .batch import EncodeJob


def row_bands(rows: int, band_rows: int, block_cells: int) -> list[tuple[int, int]]:
    """[r0, r1) bands covering `rows`, each a multiple of `block_cells` rows (except the last)."""
    band = max(block_cells, band_rows - band_rows % block_cells)
    return [(r, min(r + band, rows)) for r in range(0, rows, band)]


class EncodeBands(Bands):
    """`encode` as bands of grid rows (see the module docstring)."""

    units = "cells"
    part = "rows-{0:06d}-{1:06d}.npz"

    def __init__(self, job: EncodeJob, encoder: Encoder, opts: EncodeOptions):
        self.job, self.encoder, self.opts = job, encoder, opts
        self.reader = opts.reader

    def _skipped(self, item: SlideItem, plan: EncodePlan) -> Outcome:
        res = EncodeResult(str(item.path), plan.outputs, plan.previews, skipped=True)
        return self.job.outcome(item, res)

    def _plan(self, item: SlideItem, out_dir: Path, split: dict[str, Any]) -> EncodePlan:
        plan = plan_encode(item, out_dir, self.encoder, self.opts, sha256=split["sha256"])
        if not plan.skipped and (
            plan.params_hash != split["params_hash"] or plan.grid.rows != split["rows"]
        ):
            raise SlideError(f"{item.name}: the slide changed during the run; run again")
        return plan

    def plan(
        self, item: SlideItem, out_dir: Path, band_rows: int, progress: ProgressStart | None
    ) -> tuple[Outcome, dict[str, Any] | None]:
        plan = plan_encode(item, out_dir, self.encoder, self.opts)
        if plan.skipped:
            return self._skipped(item, plan), None
        bands = row_bands(plan.grid.rows, band_rows, self.opts.block_cells)
        if len(bands) == 1:  # one band: no gain in splitting
            feats = encode_rows(plan, self.encoder, self.opts)
            return self.job.outcome(item, write_encoded(plan, feats, self.encoder, self.opts)), None
        split = {
            "sha256": plan.sha256,
            "params_hash": plan.params_hash,
            "rows": plan.grid.rows,
            "cells": plan.cells_kept,
            "bands": [list(b) for b in bands],
        }
        outcome = Outcome(item.name, str(item.path), SPLIT, units="cells", count=plan.cells_kept)
        return outcome, split

    def code(
        self, item: SlideItem, out_dir: Path, split: dict[str, Any], band: tuple[int, int],
        target: Path,
    ) -> int | None:  # fmt: skip
        plan = self._plan(item, out_dir, split)
        if plan.skipped:  # the whole result is already there
            return None
        feats = encode_rows(plan, self.encoder, self.opts, band)
        target.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"f{i}": f for i, f in enumerate(feats)}
        keep = plan.keep[band[0] : band[1]]
        with atomic_path(target) as tmp:
            np.savez(tmp, keep=keep, **arrays)
        return int(keep.sum())

    def merge(
        self, item: SlideItem, out_dir: Path, split: dict[str, Any], parts: list[Path]
    ) -> Outcome:
        plan = self._plan(item, out_dir, split)
        if plan.skipped:
            return self._skipped(item, plan)
        self.require_parts(item, parts)
        grid = plan.grid
        feats: list[np.ndarray] = []
        for band, p in zip(split["bands"], parts, strict=True):
            r0, r1 = int(band[0]), int(band[1])
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
        return self.job.outcome(item, write_encoded(plan, feats, self.encoder, self.opts))
