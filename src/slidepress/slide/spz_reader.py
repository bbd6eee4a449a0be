"""A slidepress container (.spz) read as a slide, so every command that takes a slide takes one.

Levels, resolution and properties come from the manifest (validated when the container opens:
store/manifest.py), pixels from the coded tiles: a region decodes only the tiles it touches,
through the codec's batched decode, and keeps them in a small decoded-tile cache (bounded in
bytes) because neighbouring reads (tile grids, thumbnails read block by block, a viewer) share
tiles. Glass the container left out is filled by its background policy (white for `skip`, the
stored background tile for `constant`), as `decompress` does.

Coordinates are the container's own: its level 0 is the slide at the mpp it was written at
(manifest `mpp`, reported as the file's resolution), not the source slide's level 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ContainerError, SlideError
from ..store.container import Container, TileCache
from .base import SlideInfo, SlideReader

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record
CACHE_BYTES = 64 << 20  # decoded tiles held per open container: 340 tiles of 256 px
VENDOR = "slidepress"


class SpzReader(SlideReader):
    name = "spz"

    @classmethod
    def can_open(cls, path: Path) -> bool:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            return f.read(4) in ZIP_MAGIC

    def __init__(self, path: str | Path, cache_bytes: int = CACHE_BYTES):
        super().__init__(path)
        try:
            self.container = Container(self.path)
        except ContainerError as e:  # a slide that cannot be opened, worded as the container's
            raise SlideError(str(e)) from None
        c = self.container
        self.cache = TileCache(cache_bytes)
        mpp = float(c.levels[0].mpp)
        self.info = SlideInfo(
            path=str(self.path),
            reader=self.name,
            vendor=VENDOR,
            dimensions=(c.levels[0].width, c.levels[0].height),
            level_dimensions=tuple((lv.width, lv.height) for lv in c.levels),
            level_downsamples=tuple(float(lv.downsample) for lv in c.levels),
            mpp=(mpp, mpp),
            properties=manifest_properties(c.manifest),
        )

    def _read_level(self, lx: int, ly: int, level: int, width: int, height: int) -> np.ndarray:
        return self.container.read_region(lx, ly, width, height, level, cache=self.cache)

    def close(self) -> None:
        self.cache.clear()
        self.container.close()


def manifest_properties(manifest: dict[str, Any]) -> dict[str, str]:
    """The manifest's scalar facts as flat `slidepress.<section>.<key>` strings (as OpenSlide
    names vendor properties); lists and nested objects (the glass survey) are left out."""
    out: dict[str, str] = {}
    for key, value in manifest.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if _scalar(v):
                    out[f"{VENDOR}.{key}.{sub}"] = str(v)
        elif _scalar(value):
            out[f"{VENDOR}.{key}"] = str(value)
    return out


def _scalar(v: object) -> bool:
    return isinstance(v, str | int | float | bool) and len(str(v)) <= 1024


def container_summary(info: SlideInfo) -> dict[str, Any] | None:
    """What `info` shows of a container besides its levels: codec, background policy, tiles
    stored and the source slide; None for a slide of another reader."""
    if info.reader != SpzReader.name:
        return None
    p = info.properties

    def get(key: str) -> str | None:
        return p.get(f"{VENDOR}.{key}")

    return {
        "codec": get("codec.name"),
        "quality": get("codec.quality"),
        "background": get("background.policy"),
        "tile_size": get("tile_size"),
        "tiles_stored": get("tiles.stored"),
        "tiles_total": get("tiles.total"),
        "source": get("source.name"),
        "source_sha256": get("source.sha256"),
    }
