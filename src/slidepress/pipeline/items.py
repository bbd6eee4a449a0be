"""What a batch is made of: slides with their per-slide settings, as plain data.

A `SlideItem` travels between processes (the service, Dask workers) as a dict and opens its
slide with the resolution settled once (`open_slide`: the item's override, or the file's).
Its `source` may be a URL (`s3://...`): the item carries the URL, and `path` stages the
object on first use, in the process that reads it: a TIFF the fast path reads as a sparse
copy whose tiles are fetched by ranges (slide/ranged.py), anything else whole (remote.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import remote
from ..slide import SlideReader, open_slide, resolve_slide_path


def _source(value: str | Path) -> str | Path:
    return str(value) if remote.is_url(value) else resolve_slide_path(remote.local(value))


@dataclass(frozen=True)
class SlideItem:
    source: str | Path  # a local path, or a URL (str)
    mpp_override: float | None = None  # level-0 um/px instead of the file's
    mpp_source: str = "override"  # "override" (command line) or "table" (a CSV of slides)
    fields: Mapping[str, Any] = field(default_factory=dict)  # passed through to the report

    @classmethod
    def of(cls, slide: str | Path | SlideItem | Mapping[str, Any]) -> SlideItem:
        if isinstance(slide, SlideItem):
            return slide
        if isinstance(slide, Mapping):
            return cls.from_dict(slide)
        return cls(_source(slide))

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", _source(self.source))

    @property
    def url(self) -> str | None:
        return self.source if isinstance(self.source, str) else None

    @cached_property
    def path(self) -> Path:
        """The slide on local disk: the source, or its staged copy (fetched once)."""
        if self.url is None:
            return Path(self.source)
        from ..slide.ranged import stage_slide

        return stage_slide(self.url)

    @property
    def location(self) -> str:
        """Where the slide is, as users named it (the URL, or the local path)."""
        return self.url or str(self.source)

    @property
    def name(self) -> str:
        return remote.name(self.url) if self.url else Path(self.source).name

    @cached_property
    def stem(self) -> str:
        """Output file stem: the file name without suffix, or a DICOM folder's name."""
        if self.url is not None:
            n = remote.name(self.url)
            return n if remote.isdir(self.url) or "." not in n else n.rsplit(".", 1)[0]
        p = Path(self.source)
        return p.name if p.is_dir() else p.stem

    def open(self, reader: str | None = None) -> SlideReader:
        return open_slide(
            self.path, reader=reader, mpp_override=self.mpp_override, mpp_source=self.mpp_source
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.location,
            "mpp_override": self.mpp_override,
            "mpp_source": self.mpp_source,
            "fields": dict(self.fields),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SlideItem:
        mpp = d.get("mpp_override")
        return cls(
            _source(d["path"]),
            float(mpp) if mpp not in (None, "") else None,
            d.get("mpp_source", "override"),
            dict(d.get("fields") or {}),
        )
