"""What a distributed batch runs on: the slides under a folder, or the rows of a CSV manifest.

Each slide becomes a `Task`: its `SlideItem` as plain data (what a Dask worker receives) and
the folder its outputs go to. A folder is searched recursively and its layout is mirrored in
the output folder, so `a/x.svs` and `b/x.svs` do not write the same `x.zarr`; a folder
holding a DICOM WSI series is one slide, and the other files beside it are slides of their
own (`slide.discovery`; suffixes from the READERS entries). Discovery never opens a slide: an
unreadable file is found here and fails on its worker, recorded in the report, while the
others run.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..pipeline.items import SlideItem
from ..slide.discovery import slides_in

MPP_COLUMNS = ("mpp", "mpp_override")


@dataclass(frozen=True)
class Task:
    """One slide of the batch: the item (plain dict) and where its outputs go."""

    item: dict[str, Any]
    out_dir: str

    @property
    def path(self) -> Path:
        return Path(self.item["path"])

    @property
    def stem(self) -> str:
        p = self.path
        return p.name if p.is_dir() else p.stem


def _float_or_none(value: str | None, where: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{where}: mpp {value!r} is not a number") from None


def _from_csv(path: Path, out_dir: Path) -> list[Task]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{path}: cannot read the manifest ({e})") from None
    if not rows or "path" not in header:
        raise UsageError(f"{path}: a manifest needs a 'path' column and at least one row")
    mpp_col = next((c for c in MPP_COLUMNS if c in header), None)
    tasks = []
    base = path.parent
    for i, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise UsageError(f"{path}, line {i}: empty path")
        slide = Path(raw) if Path(raw).is_absolute() else base / raw
        mpp = _float_or_none(row.get(mpp_col), f"{path}, line {i}") if mpp_col else None
        fields = {k: v for k, v in row.items() if k not in ("path", mpp_col) and k is not None}
        item = SlideItem(slide, mpp, "table", fields)
        sub = _relative_parent(slide, base)
        tasks.append(Task(item.to_dict(), str(out_dir / sub)))
    return tasks


def _relative_parent(slide: Path, base: Path) -> Path:
    try:
        return slide.parent.resolve().relative_to(base.resolve())
    except ValueError:  # outside the manifest's folder: flat
        return Path()


def discover(
    source: str | Path, out_dir: str | Path, mpp_override: float | None = None
) -> list[Task]:
    """Tasks for INPUT: a folder (recursive), a CSV manifest (`path`, optional `mpp`, other
    columns passed through to the report) or one slide. Two slides that would write the same
    output are refused before anything runs."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise UsageError(f"{source}: no such file or folder")
    if source.is_file() and source.suffix.lower() == ".csv":
        tasks = _from_csv(source, out_dir)
    elif source.is_dir():
        skip = out_dir.resolve() if out_dir.exists() else out_dir.absolute()
        slides = slides_in(source, recursive=True, skip=skip)
        if not slides:
            raise UsageError(f"{source}: folder holds no slides")
        tasks = [
            Task(SlideItem(p, mpp_override).to_dict(), str(out_dir / _relative_parent(p, source)))
            for p in slides
        ]
    else:
        tasks = [Task(SlideItem(source, mpp_override).to_dict(), str(out_dir))]
    seen: dict[tuple[str, str], Path] = {}
    for t in tasks:
        key = (t.out_dir, t.stem)
        if key in seen:
            raise UsageError(
                f"{seen[key]} and {t.path} would write the same outputs in {t.out_dir}; "
                "rename one or list them in separate runs"
            )
        seen[key] = t.path
    return tasks
