"""What a batch is made of: slides with their per-slide settings, as plain data.

A `SlideItem` travels between processes (the service, Dask workers) as a dict and opens its
slide with the resolution settled once (`open_slide`: the item's override, or the file's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..slide import SlideReader, open_slide, resolve_slide_path


@dataclass(frozen=True)
class SlideItem:
    path: Path
    mpp_override: float | None = None  # level-0 um/px instead of the file's
    mpp_source: str = "override"  # "override" (command line) or "table" (a CSV of slides)
    fields: Mapping[str, Any] = field(default_factory=dict)  # passed through to the report

    @classmethod
    def of(cls, slide: str | Path | SlideItem | Mapping[str, Any]) -> SlideItem:
        if isinstance(slide, SlideItem):
            return slide
        if isinstance(slide, Mapping):
            return cls.from_dict(slide)
        return cls(resolve_slide_path(slide))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def stem(self) -> str:
        """Output file stem: the file name without suffix, or a DICOM folder's name."""
        return self.path.name if self.path.is_dir() else self.path.stem

    def open(self, reader: str | None = None) -> SlideReader:
        return open_slide(
            self.path, reader=reader, mpp_override=self.mpp_override, mpp_source=self.mpp_source
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "mpp_override": self.mpp_override,
            "mpp_source": self.mpp_source,
            "fields": dict(self.fields),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SlideItem:
        mpp = d.get("mpp_override")
        return cls(
            resolve_slide_path(d["path"]),
            float(mpp) if mpp not in (None, "") else None,
            d.get("mpp_source", "override"),
            dict(d.get("fields") or {}),
        )
