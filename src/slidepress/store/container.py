"""The slide container (.spz): coded tiles of a slide pyramid in an uncompressed ZIP archive.

Why ZIP: it is a standard, inspectable (`unzip -l`) single file with a central directory that
gives random access to any tile, a CRC-32 per entry that Python's zipfile checks on every
read (our per-tile checksum: a flipped byte is reported with the tile's name), ZIP64 for
files over 4 GB, and streaming writes. Tiles are already coded, so entries are STORED.

Layout:
    manifest.json                    what the container holds and how it was made
    L{level}/{row:05d}_{col:05d}.ext one coded tile (tile x tile px; edge tiles padded white)
    background.ext                   only with the `constant` background policy

Coordinates are in the container's level-0 pixel grid (the slide at `mpp`); the manifest's
`source.level0_px_per_px` maps them back to the source slide's level 0.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..codecs import Codec, get_codec
from ..errors import CodecError, ContainerError, UsageError

FORMAT_NAME = "slidepress-container"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKGROUND_POLICIES = ("skip", "constant", "keep")
WHITE = 255


@dataclass(frozen=True)
class ContainerLevel:
    index: int
    width: int  # pixels at this level
    height: int
    rows: int  # tiles
    cols: int
    downsample: float  # container level-0 pixels per pixel of this level
    mpp: float


def tile_name(level: int, row: int, col: int, suffix: str) -> str:
    return f"L{level}/{row:05d}_{col:05d}{suffix}"


class ContainerWriter:
    """Streams coded tiles into a ZIP at `path` (a temporary name: the caller renames)."""

    def __init__(self, path: Path, codec: Codec):
        self.codec = codec
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self.tile_bytes = 0
        self.tile_count = 0

    def add_tile(self, level: int, row: int, col: int, data: bytes) -> None:
        self._zip.writestr(tile_name(level, row, col, self.codec.suffix), data)
        self.tile_bytes += len(data)
        self.tile_count += 1

    def add_background(self, data: bytes) -> None:
        self._zip.writestr(f"background{self.codec.suffix}", data)
        self.tile_bytes += len(data)

    def close(self, manifest: dict[str, Any]) -> None:
        self._zip.writestr(MANIFEST, json.dumps(manifest, indent=1))
        self._zip.close()

    def abort(self) -> None:
        self._zip.close()


class Container:
    """Random access to a container's tiles and regions; every tile read is CRC-checked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ContainerError(f"{self.path}: no such container file")
        try:
            self._zip = zipfile.ZipFile(self.path, "r")
            raw = self._zip.read(MANIFEST)
            self.manifest: dict[str, Any] = json.loads(raw)
        except KeyError:
            raise ContainerError(f"{self.path.name}: not a slidepress container") from None
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as e:
            raise ContainerError(
                f"{self.path.name}: truncated or corrupted container ({e})"
            ) from None
        if self.manifest.get("format") != FORMAT_NAME:
            raise ContainerError(f"{self.path.name}: not a slidepress container")
        if self.manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ContainerError(
                f"{self.path.name}: container format {self.manifest['format_version']} is newer "
                "than this slidepress understands; upgrade slidepress"
            )
        m = self.manifest
        self.tile = int(m["tile_size"])
        self.levels = [ContainerLevel(**lv) for lv in m["levels"]]
        c = m["codec"]
        try:
            self.codec = get_codec(c["name"], c["quality"], **c.get("params", {}))
        except CodecError as e:
            raise ContainerError(f"{self.path.name}: {e}") from None
        self.background = m["background"]["policy"]
        self._names = set(self._zip.namelist())
        self._background_tile: np.ndarray | None = None

    # -- tiles ---------------------------------------------------------------------------------
    def has_tile(self, level: int, row: int, col: int) -> bool:
        return tile_name(level, row, col, self.codec.suffix) in self._names

    def tile_bytes(self, level: int, row: int, col: int) -> bytes | None:
        name = tile_name(level, row, col, self.codec.suffix)
        if name not in self._names:
            return None
        return self._read_entry(name)

    def _read_entry(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
            raise ContainerError(f"{self.path.name}: tile {name} is corrupted ({e})") from None

    def decode(self, data: bytes, name: str = "tile") -> np.ndarray:
        try:
            return self.codec.decode(data)
        except CodecError as e:
            raise ContainerError(f"{self.path.name}: {name} cannot be decoded ({e})") from None

    def read_tile(self, level: int, row: int, col: int) -> np.ndarray:
        """Decoded tile (tile x tile x 3); background tiles per the container's policy."""
        data = self.tile_bytes(level, row, col)
        if data is not None:
            return self.decode(data, tile_name(level, row, col, self.codec.suffix))
        return self.background_tile()

    def background_tile(self) -> np.ndarray:
        if self._background_tile is None:
            if self.background == "constant":
                name = f"background{self.codec.suffix}"
                self._background_tile = self.decode(self._read_entry(name), name)
            else:
                self._background_tile = np.full((self.tile, self.tile, 3), WHITE, np.uint8)
        return self._background_tile

    def stored_tiles(self, level: int) -> list[tuple[int, int]]:
        prefix = f"L{level}/"
        out = []
        for n in self._names:
            if n.startswith(prefix):
                r, c = n[len(prefix) :].split(".")[0].split("_")
                out.append((int(r), int(c)))
        return sorted(out)

    # -- regions -------------------------------------------------------------------------------
    def read_region(self, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        """Pixels [y, y+h) x [x, x+w) of `level`, decoding only the tiles that intersect."""
        if not 0 <= level < len(self.levels):
            raise UsageError(f"level {level} out of range 0..{len(self.levels) - 1}")
        lv = self.levels[level]
        if w <= 0 or h <= 0:
            raise UsageError(f"region size must be positive, got {w} x {h}")
        if x < 0 or y < 0 or x + w > lv.width or y + h > lv.height:
            raise UsageError(
                f"region ({x}, {y}, {w} x {h}) lies outside level {level} "
                f"({lv.width} x {lv.height})"
            )
        t = self.tile
        out = np.empty((h, w, 3), np.uint8)
        for row in range(y // t, (y + h - 1) // t + 1):
            for col in range(x // t, (x + w - 1) // t + 1):
                tile = self.read_tile(level, row, col)
                ty0, tx0 = row * t, col * t
                a0, a1 = max(y, ty0), min(y + h, ty0 + t)
                b0, b1 = max(x, tx0), min(x + w, tx0 + t)
                out[a0 - y : a1 - y, b0 - x : b1 - x] = tile[
                    a0 - ty0 : a1 - ty0, b0 - tx0 : b1 - tx0
                ]
        return out

    def verify(self) -> list[str]:
        """Names of entries whose CRC fails (reads every byte once)."""
        bad = self._zip.testzip()
        return [bad] if bad else []

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def level_dict(level: ContainerLevel) -> dict[str, Any]:
    return asdict(level)


def check_background_policy(policy: str) -> str:
    if policy not in BACKGROUND_POLICIES:
        raise UsageError(f"background policy must be one of {', '.join(BACKGROUND_POLICIES)}")
    return policy
