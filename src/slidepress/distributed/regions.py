"""One huge slide as many Dask tasks: bands of rows coded apart, merged into the single output
a whole-slide run writes (encode: the grid file(s); compress: the `.spz` container).

Three jobs per slide, each wrapping the batch job and run through `pipeline.batch.run_slide`
(so a bad slide is a `failed` outcome like any other). What is done in them is the job kind's
own (`Job.bands()`, a `pipeline.batch.Bands`: pipeline/encode_bands.py,
pipeline/compress_bands.py); this module only decides when to split and where the parts go:

- `SplitJob`: a slide under the size threshold (or of a kind that never splits) is processed
  whole, as the plain job does. Above it, the slide is planned once and the job records
  `split` (the content key, the bands and what the bands need) instead.
- `RegionJob`: one band of rows, saved atomically under `OUTDIR/.slidepress-parts/STEM.KEY/`
  (encode: `rows-R0-R1.npz`; compress: `tiles-R0-R1.zip`). A band whose part exists is not
  redone: an interrupted run resumes band by band.
- `MergeJob`: the parts put together and written by the writer of a whole-slide run,
  atomically, then the parts removed.

Bands start at multiples of the read-block size, so each band reads exactly the blocks a
whole-slide run reads and the merged output equals the whole-slide output (tested: grids
array-wise, containers entry by entry with identical tile bytes and the same PSNR to the bit).
The parts folder is keyed by the content key: a changed slide or parameter never mixes parts.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..pipeline.batch import SPLIT, Bands, Job, Outcome
from ..pipeline.items import SlideItem
from ..progress import ProgressStart

__all__ = [
    "PARTS", "SPLIT", "MergeJob", "RegionJob", "SplitJob", "level0_pixels", "merge_job",
    "part_path", "parts_dir", "region_job", "split_job",
]  # fmt: skip

PARTS = ".slidepress-parts"


def parts_dir(out_dir: str | Path, stem: str, params_hash: str) -> Path:
    return Path(out_dir) / PARTS / f"{stem}.{params_hash[:16]}"


def part_path(parts: Path, job: Job, band: tuple[int, int]) -> Path:
    """Where `job`'s part of `band` goes in the slide's `parts` folder."""
    return parts / _bands(job).part_name(band)


def level0_pixels(item: SlideItem, reader: str | None) -> int:
    """Level-0 area of a slide (opening it only to read its header)."""
    with item.open(reader) as r:
        w, h = r.info.dimensions
    return int(w) * int(h)


def _bands(job: Job) -> Bands:
    bands = job.bands()
    if bands is None:
        raise TypeError(f"{job.kind} jobs are not split into bands")
    return bands


def _band(band: Any) -> tuple[int, int]:
    return int(band[0]), int(band[1])


def _remove_parts(parts: Path) -> None:
    shutil.rmtree(parts, ignore_errors=True)
    try:
        parts.parent.rmdir()  # the shared .slidepress-parts folder, once empty
    except OSError:
        pass


@dataclass
class _Step(Job):
    """A step of a slide split into bands, around the batch job of its kind (in-process only:
    a task rebuilds it from the job dict)."""

    job: Job

    def prepare(self) -> None:
        self.job.prepare()

    def to_dict(self) -> dict[str, Any]:
        return self.job.to_dict()


@dataclass
class SplitJob(_Step):
    """Run a slide whole, or (above `region_px` level-0 pixels, more than one band) plan it
    and leave `split` set for the region tasks."""

    kind: ClassVar[str] = "split"
    region_px: float = 0.0  # 0: never split
    band_rows: int = 64  # rows per band (rounded down to the kind's read block)
    split: dict[str, Any] | None = field(default=None, init=False)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        bands = self.job.bands() if self.region_px else None
        if bands is None or level0_pixels(item, bands.reader) <= self.region_px:
            return self.job.run(item, out_dir, progress)
        outcome, self.split = bands.plan(item, out_dir, self.band_rows, progress)
        return outcome


@dataclass
class RegionJob(_Step):
    """Code one band of a split slide and save it as a part."""

    kind: ClassVar[str] = "region"
    split: dict[str, Any] = field(default_factory=dict)
    band: tuple[int, int] = (0, 0)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        bands, band = _bands(self.job), _band(self.band)
        target = parts_dir(out_dir, item.stem, self.split["params_hash"]) / bands.part_name(band)
        if target.exists():  # done by an earlier (interrupted) run or a retried task
            return Outcome(item.name, str(item.path), "skipped", units=bands.units)
        n = bands.code(item, out_dir, self.split, band, target)
        status = "skipped" if n is None else "done"  # None: the whole output is there
        return Outcome(item.name, str(item.path), status, units=bands.units, count=n or 0)


@dataclass
class MergeJob(_Step):
    """Put the parts of every band together into the slide's output; remove the parts."""

    kind: ClassVar[str] = "merge"
    split: dict[str, Any] = field(default_factory=dict)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        bands = _bands(self.job)
        parts = parts_dir(out_dir, item.stem, self.split["params_hash"])
        files = [parts / bands.part_name(_band(b)) for b in self.split["bands"]]
        outcome = bands.merge(item, out_dir, self.split, files)
        _remove_parts(parts)
        return outcome


def split_job(job: Job, region_px: float, band_rows: int) -> SplitJob:
    return SplitJob(job, region_px, band_rows)


def region_job(job: Job, split: dict[str, Any], band: list[int]) -> RegionJob:
    return RegionJob(job, split, _band(band))


def merge_job(job: Job, split: dict[str, Any]) -> MergeJob:
    return MergeJob(job, split)
