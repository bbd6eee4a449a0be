"""What a distributed batch runs on: the slides under a folder, or the rows of a CSV manifest.

Each slide becomes a `Task`: its `SlideItem` as plain data (what a Dask worker receives) and
the folder its outputs go to. A folder is searched recursively and its layout is mirrored in
the output folder, so `a/x.svs` and `b/x.svs` do not write the same `x.zarr`; a folder
holding a DICOM WSI series is one slide, and the other files beside it are slides of their
own (`slide.discovery`; suffixes from the READERS entries). Discovery never opens a slide: an
unreadable file is found here and fails on its worker, recorded in the report, while the
others run.

INPUT and the output folder may be URLs (remote.py): a prefix is listed (recursively, its
layout mirrored under the output prefix), a manifest CSV is read from the store (relative
`path`s are relative to its prefix); tasks carry the URLs, and each worker stages its slide
and uploads its outputs itself.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import remote
from ..errors import UsageError
from ..pipeline.items import SlideItem
from ..slide.discovery import slides_at_url, slides_in

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
    def name(self) -> str:
        return remote.name(self.item["path"])

    @property
    def stem(self) -> str:
        if remote.is_url(self.item["path"]):
            return SlideItem.from_dict(self.item).stem
        p = self.path
        return p.name if p.is_dir() else p.stem


def _float_or_none(value: str | None, where: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{where}: mpp {value!r} is not a number") from None


def _from_csv(path: Path | str, out_dir: Path | str) -> list[Task]:
    url = str(path) if remote.is_url(path) else None
    local = remote.localize(path)
    try:
        with open(local, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{path}: cannot read the manifest ({e})") from None
    if not rows or "path" not in header:
        raise UsageError(f"{path}: a manifest needs a 'path' column and at least one row")
    mpp_col = next((c for c in MPP_COLUMNS if c in header), None)
    tasks = []
    if url is not None:
        path = remote.public(url)
        for i, row in enumerate(rows, start=2):
            raw = (row.get("path") or "").strip()
            if not raw:
                raise UsageError(f"{path}, line {i}: empty path")
            slide = raw if remote.is_url(raw) else remote.join(remote.parent(url), raw)
            mpp = _float_or_none(row.get(mpp_col), f"{path}, line {i}") if mpp_col else None
            fields = {k: v for k, v in row.items() if k not in ("path", mpp_col) and k is not None}
            sub = remote.parent(raw) if "/" in raw and not remote.is_url(raw) else ""
            item = SlideItem(slide, mpp, "table", fields)
            tasks.append(Task(item.to_dict(), remote.join(str(out_dir), sub)))
        return tasks
    base = Path(path).parent
    for i, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise UsageError(f"{path}, line {i}: empty path")
        slide = Path(raw) if Path(raw).is_absolute() else base / raw
        mpp = _float_or_none(row.get(mpp_col), f"{path}, line {i}") if mpp_col else None
        fields = {k: v for k, v in row.items() if k not in ("path", mpp_col) and k is not None}
        item = SlideItem(slide, mpp, "table", fields)
        sub = _relative_parent(slide, base)
        tasks.append(Task(item.to_dict(), remote.join(str(out_dir), sub.as_posix())))
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
    columns passed through to the report) or one slide; each may be a URL, and so may
    `out_dir`. Two slides that would write the same output are refused before anything runs."""
    if remote.is_url(source):
        tasks = _from_url(str(source), str(out_dir), mpp_override)
        _refuse_clashes(tasks)
        return tasks
    source = remote.local(source)
    out_dir = str(out_dir) if remote.is_url(out_dir) else remote.local(out_dir)
    if not source.exists():
        raise UsageError(f"{source}: no such file or folder")
    if source.is_file() and source.suffix.lower() == ".csv":
        tasks = _from_csv(source, out_dir)
    elif source.is_dir():
        if isinstance(out_dir, Path):
            skip = out_dir.resolve() if out_dir.exists() else out_dir.absolute()
        else:
            skip = None
        slides = slides_in(source, recursive=True, skip=skip)
        if not slides:
            raise UsageError(f"{source}: folder holds no slides")
        tasks = [
            Task(SlideItem(p, mpp_override).to_dict(),
                 remote.join(str(out_dir), _relative_parent(p, source).as_posix()))
            for p in slides
        ]  # fmt: skip
    else:
        tasks = [Task(SlideItem(source, mpp_override).to_dict(), str(out_dir))]
    _refuse_clashes(tasks)
    return tasks


def _from_url(source: str, out_dir: str, mpp_override: float | None) -> list[Task]:
    """Tasks for a URL: a manifest CSV, a prefix (listed recursively, its layout mirrored
    under `out_dir`), or one slide."""
    if source.lower().endswith(".csv"):
        return _from_csv(source, out_dir)
    if not remote.isdir(source):
        remote.info(source)  # missing: one line now
        return [Task(SlideItem(source, mpp_override).to_dict(), out_dir)]
    base = source.rstrip("/")
    slides = slides_at_url(base, recursive=True)
    if not slides:
        raise UsageError(f"{remote.public(source)}: prefix holds no slides")
    tasks = []
    for s in slides:
        sub = remote.parent(s)[len(base) :].strip("/") if s != base else ""
        tasks.append(Task(SlideItem(s, mpp_override).to_dict(), remote.join(out_dir, sub)))
    return tasks


def _refuse_clashes(tasks: list[Task]) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for t in tasks:
        key = (t.out_dir, t.stem)
        if key in seen:
            raise UsageError(
                f"{seen[key]} and {t.path} would write the same outputs in {t.out_dir}; "
                "rename one or list them in separate runs"
            )
        seen[key] = t.path
