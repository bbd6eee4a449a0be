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
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .. import limits, remote
from ..codecs import Codec
from ..errors import CodecError, ContainerError, UsageError
from .manifest import (
    BACKGROUND_POLICIES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_MANIFEST_BYTES,
    ContainerLevel,
    ManifestLayout,
    parse_manifest,
    validate_manifest,
)

__all__ = [
    "BACKGROUND_POLICIES", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "Container",
    "ContainerLevel", "ContainerWriter", "TileCache", "check_background_policy", "level_dict",
    "tile_name",
]  # fmt: skip

MANIFEST = "manifest.json"
WHITE = 255
# canonical tile names only (what tile_name writes): no leading zeros, rows/cols >= 5 digits
_TILE_NAME = r"L(0|[1-9]\d*)/(\d{5}|[1-9]\d{5,})_(\d{5}|[1-9]\d{5,})"
_UNSAFE_NAME = re.compile(r"[\0\\]|^/|^[A-Za-z]:|(^|/)\.\.(/|$)")
_LOCAL_HEADER = 30  # fixed part of a zip local file header, before name and extra field
_ZIP_ERRORS = (
    zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, zlib.error,
    struct.error, OverflowError, NotImplementedError, RuntimeError,
)  # fmt: skip


def tile_name(level: int, row: int, col: int, suffix: str) -> str:
    return f"L{level}/{row:05d}_{col:05d}{suffix}"


def tile_entry_cap(tile: int) -> int:
    """Largest coded tile accepted: 4x the raw pixels (noise at any codec's top quality: < 1.5x)."""
    return min(limits.current().max_entry_bytes, 4 * tile * tile * 3 + (64 << 10))


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


class TileCache:
    """Decoded tiles, least recently used dropped first, at most `max_bytes` held.

    For readers that ask for overlapping regions (a viewer, a tile grid whose cells straddle
    coded tiles, a thumbnail read in blocks): a neural codec's tile costs milliseconds to
    decode, a cached one nothing. Keyed by (level, row, col); one cache per Container."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._tiles: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tiles)

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        tile = self._tiles.get(key)
        if tile is not None:
            self._tiles.move_to_end(key)
        return tile

    def put(self, key: tuple[int, int, int], tile: np.ndarray) -> None:
        if tile.nbytes > self.max_bytes or key in self._tiles:
            return
        tile.flags.writeable = False  # shared with later reads: nobody may paint on it
        self._tiles[key] = tile
        self.bytes += tile.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._tiles.popitem(last=False)
            self.bytes -= old.nbytes

    def clear(self) -> None:
        self._tiles.clear()
        self.bytes = 0


class Container:
    """Random access to a container's tiles and regions; every tile read is CRC-checked.

    Opening validates everything that does not need a tile decoded: the zip's entries (safe
    names, uncompressed, sizes within limits and within the file), the manifest's schema
    (store/manifest.py), and that every tile entry belongs to a level, row and column of the
    manifest. Decoded tiles are checked to be tile x tile RGB. Any failure is a ContainerError.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise ContainerError(f"{self.path}: no such container file")
        if not self.path.is_file():
            raise ContainerError(f"{self.path}: not a file; give a container (.spz) file")
        try:
            self._zip = zipfile.ZipFile(self.path, "r")
        except _ZIP_ERRORS as e:
            raise ContainerError(
                f"{self.path.name}: truncated or corrupted container ({e})"
            ) from None
        try:
            self._open()
        except BaseException:
            self._zip.close()
            raise

    def _fail(self, what: str) -> NoReturn:
        raise ContainerError(f"{self.path.name}: {what}")

    def _open(self) -> None:
        infos = self._zip.infolist()
        if MANIFEST not in self._zip.NameToInfo:
            self._fail("not a slidepress container (no manifest.json)")
        self._check_entries(infos)
        cap = min(MAX_MANIFEST_BYTES, limits.current().max_entry_bytes)
        size = self._zip.getinfo(MANIFEST).file_size
        if size > cap:
            self._fail(f"manifest.json declares {size} bytes; a manifest is at most {cap}")
        self.manifest: dict[str, Any] = parse_manifest(self._read_entry(MANIFEST), self.path.name)
        layout = validate_manifest(self.manifest, self.path.name)
        self.format_version = layout.format_version
        self.tile = layout.tile
        self.levels: list[ContainerLevel] = layout.levels
        self.codec: Codec = layout.codec
        self.background: str = layout.background
        self._names: set[str] = set()
        self._check_tiles(infos, layout)
        self._background_tile: np.ndarray | None = None

    def _check_entries(self, infos: list[zipfile.ZipInfo]) -> None:
        """Zip-level checks, before any entry is read: nothing is inflated or read past."""
        lim = limits.current()
        for info in infos:
            name, raw = info.filename, info.orig_filename
            if _UNSAFE_NAME.search(raw):
                self._fail(
                    f"unsafe entry name {_short(raw)} (absolute, '..', backslash or NUL): "
                    "the container was tampered with"
                )
            if info.flag_bits & 0x1:
                self._fail(f"entry {_short(name)} is encrypted; slidepress never encrypts")
            if info.compress_type != zipfile.ZIP_STORED:
                self._fail(
                    f"entry {_short(name)} is compressed (zip method {info.compress_type}, "
                    f"declares {info.file_size} bytes); slidepress stores entries uncompressed, "
                    "so it is not inflated: re-create the container with slidepress compress"
                )
            if info.compress_size != info.file_size:
                self._fail(
                    f"entry {_short(name)} declares {info.file_size} bytes but stores "
                    f"{info.compress_size}: the container is damaged"
                )
            if info.file_size > lim.max_entry_bytes:
                self._fail(
                    f"entry {_short(name)} declares {info.file_size} bytes, over the limit "
                    f"max_entry_bytes = {lim.max_entry_bytes}; {limits.hint('max_entry_bytes')}"
                )
        if len({i.filename for i in infos}) != len(infos):
            seen: set[str] = set()
            dup = next(i.filename for i in infos if i.filename in seen or seen.add(i.filename))
            self._fail(f"entry {_short(dup)} appears twice: the container was tampered with")
        # declared sizes vs the bytes actually there: each entry's data must end before the
        # next entry (or the central directory) starts; overlapping entries are a zip bomb
        ordered = sorted(infos, key=lambda i: i.header_offset)
        ends = [i.header_offset for i in ordered[1:]] + [self._zip.start_dir]
        for info, limit in zip(ordered, ends, strict=True):
            name = info.orig_filename
            if name.isascii():
                name_len = len(name)
            else:
                name_len = len(name.encode("utf-8" if info.flag_bits & 0x800 else "cp437"))
            end = info.header_offset + _LOCAL_HEADER + name_len + info.compress_size
            if info.header_offset < 0 or end > limit:
                self._fail(
                    f"entry {_short(info.filename)} declares {info.compress_size} bytes, more "
                    "than the file holds there: the container is truncated or tampered with"
                )

    def _check_tiles(self, infos: list[zipfile.ZipInfo], layout: ManifestLayout) -> None:
        """Every entry is the manifest, the background tile or a tile of a declared cell."""
        suffix = self.codec.suffix
        cap = tile_entry_cap(self.tile)
        background = f"background{suffix}"
        pattern = re.compile(_TILE_NAME + re.escape(suffix))
        example = tile_name(0, 0, 0, suffix)
        levels = self.levels
        count = 0
        for info in infos:
            name = info.filename
            if name == MANIFEST:
                continue
            if info.file_size > cap:
                self._fail(
                    f"entry {_short(name)} declares {info.file_size} bytes; a coded "
                    f"{self.tile} px tile is at most {cap}: the container was tampered with"
                )
            if name == background:
                continue
            m = pattern.fullmatch(name)
            if not m:
                self._fail(
                    f"unexpected entry {_short(name)}; this {self.codec.name} container holds "
                    f"{MANIFEST}, {background} and tiles named like {example}"
                )
            level, row, col = int(m[1]), int(m[2]), int(m[3])
            if level >= len(levels):
                self._fail(
                    f"entry {_short(name)} is a tile of level {level}; the manifest has "
                    f"levels 0..{len(levels) - 1}"
                )
            lv = levels[level]
            if row >= lv.rows or col >= lv.cols:
                self._fail(
                    f"entry {_short(name)} lies outside level {level} ({lv.rows} rows x "
                    f"{lv.cols} cols of tiles)"
                )
            self._names.add(name)
            count += 1
        if layout.tiles_stored is not None and layout.tiles_stored != count:
            self._fail(
                f"the manifest says {layout.tiles_stored} tiles are stored, the archive holds "
                f"{count}: tiles were removed or added"
            )
        if self.background == "constant" and background not in self._zip.NameToInfo:
            self._fail(f"background policy 'constant' but no {background} entry")
        if self.background == "keep" and count != layout.tiles_total:
            self._fail(
                f"background policy 'keep' stores all {layout.tiles_total} tiles, the archive "
                f"holds {count}: tiles were removed"
            )

    @property
    def source_name(self) -> str | None:
        """The source slide's file name as recorded (informational: None when absent)."""
        source = self.manifest.get("source")
        name = source.get("name") if isinstance(source, dict) else None
        return name if isinstance(name, str) else None

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
        except _ZIP_ERRORS as e:
            what = "the manifest" if name == MANIFEST else f"tile {name}"
            raise ContainerError(f"{self.path.name}: {what} is corrupted ({e})") from None

    def decode(self, data: bytes, name: str = "tile") -> np.ndarray:
        """Coded bytes -> a tile x tile x 3 uint8 tile, or ContainerError naming the tile."""
        t = self.tile
        try:
            # a tile declaring another size is refused before its pixels are allocated
            tile = self.codec.decode(data, shape=(t, t, 3))
        except CodecError as e:
            raise ContainerError(f"{self.path.name}: {name} cannot be decoded ({e})") from None
        if tile.shape != (t, t, 3) or tile.dtype != np.uint8:
            shape = " x ".join(str(n) for n in tile.shape)
            raise ContainerError(
                f"{self.path.name}: {name} decodes to {shape} {tile.dtype}, not the container's "
                f"{t} x {t} x 3 uint8 tiles: the container is damaged or was tampered with"
            )
        return tile

    def read_tile(self, level: int, row: int, col: int) -> np.ndarray:
        """Decoded tile (tile x tile x 3); background tiles per the container's policy."""
        data = self.tile_bytes(level, row, col)
        if data is not None:
            return self.decode(data, tile_name(level, row, col, self.codec.suffix))
        return self.background_tile()

    def read_tiles(self, level: int, cells: list[tuple[int, int]]) -> list[np.ndarray]:
        """Several tiles at once: a batched codec (a neural one) decodes them together."""
        if not self.codec.batched:
            return [self.read_tile(level, r, c) for r, c in cells]
        blobs = {rc: self.tile_bytes(level, *rc) for rc in cells}
        stored = [rc for rc in cells if blobs[rc] is not None]
        t = self.tile
        try:
            tiles = self.codec.decode_batch([blobs[rc] for rc in stored], shape=(t, t, 3))
        except CodecError as e:
            raise ContainerError(
                f"{self.path.name}: level {level} tiles cannot be decoded ({e})"
            ) from None
        decoded = dict(zip(stored, tiles, strict=True))
        for rc, tile in decoded.items():
            if tile.shape != (t, t, 3) or tile.dtype != np.uint8:
                name = tile_name(level, *rc, self.codec.suffix)
                raise ContainerError(f"{self.path.name}: {name} does not decode to {t} x {t} x 3")
        return [decoded[rc] if rc in decoded else self.background_tile() for rc in cells]

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

    def read_tiles_cached(
        self, level: int, cells: list[tuple[int, int]], cache: TileCache | None
    ) -> list[np.ndarray]:
        """`read_tiles`, taking what `cache` holds from it and decoding the rest in one batch
        (then adding them). Tiles come back read-only when a cache is given."""
        if cache is None:
            return self.read_tiles(level, cells)
        found = {rc: cache.get((level, *rc)) for rc in cells}
        missing = [rc for rc in cells if found[rc] is None]
        if missing:
            for rc, tile in zip(missing, self.read_tiles(level, missing), strict=True):
                found[rc] = tile
                if tile is not self._background_tile:  # held once already
                    cache.put((level, *rc), tile)
        return [found[rc] for rc in cells]

    # -- regions -------------------------------------------------------------------------------
    def read_region(
        self, x: int, y: int, w: int, h: int, level: int = 0, *, cache: TileCache | None = None
    ) -> np.ndarray:
        """Pixels [y, y+h) x [x, x+w) of `level`, decoding only the tiles that intersect (and
        only those `cache` does not hold, when one is given)."""
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
        cells = [
            (row, col)
            for row in range(y // t, (y + h - 1) // t + 1)
            for col in range(x // t, (x + w - 1) // t + 1)
        ]
        tiles = self.read_tiles_cached(level, cells, cache)
        for (row, col), tile in zip(cells, tiles, strict=True):
            ty0, tx0 = row * t, col * t
            a0, a1 = max(y, ty0), min(y + h, ty0 + t)
            b0, b1 = max(x, tx0), min(x + w, tx0 + t)
            out[a0 - y : a1 - y, b0 - x : b1 - x] = tile[a0 - ty0 : a1 - ty0, b0 - tx0 : b1 - tx0]
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


def _short(name: str) -> str:
    """An entry name for a one-line message: repr (escapes NUL, newlines), at most ~80 chars."""
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def level_dict(level: ContainerLevel) -> dict[str, Any]:
    return asdict(level)


def check_background_policy(policy: str) -> str:
    if policy not in BACKGROUND_POLICIES:
        raise UsageError(f"background policy must be one of {', '.join(BACKGROUND_POLICIES)}")
    return policy


# -- a container in object storage: what opening it reads, by ranges ---------------------

INDEX_TAIL_BYTES = 64 << 10  # the first read: the zip's end records and, in most containers,
# the central directory and the manifest before it (the writer puts the manifest last)
INDEX_READ_BYTES = 64 << 10  # a read outside what is fetched: at least this much, from there
# more index than this (a legitimate one is ~70 bytes per tile) is not held in memory
INDEX_MAX_BYTES = 64 << 20


class _IndexTooLarge(Exception):
    pass


class _RangedZipSource:
    """A read-only, seekable file over an object that fetches what is read, by ranges
    (`remote.read_ranges`), and keeps every block fetched: what `zipfile` reads to open an
    archive and read one entry."""

    def __init__(self, url: str, size: int):
        self.url, self.size, self.pos = url, size, 0
        self.blocks: dict[int, bytes] = {}
        if size:
            self._fetch(max(0, size - INDEX_TAIL_BYTES), size)

    def _fetch(self, start: int, end: int) -> bytes:
        if sum(map(len, self.blocks.values())) + end - start > INDEX_MAX_BYTES:
            raise _IndexTooLarge  # a hostile index: not into memory (whole copy on disk)
        (data,) = remote.read_ranges(self.url, [(start, end - start)])
        self.blocks[start] = data
        return data

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the object")
        self.pos = base + offset
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        for start, data in self.blocks.items():
            if start <= self.pos and end <= start + len(data):
                break
        else:
            start = self.pos
            data = self._fetch(start, min(self.size, max(end, start + INDEX_READ_BYTES)))
        out = data[self.pos - start : end - start]
        self.pos = end
        return out

    def close(self) -> None:
        pass


def fetch_index(url: str, target: Path) -> bool:
    """A local copy of the container at `url` for a re-run's skip check, holding only what
    opening it reads (`Container`: the zip's end records, its central directory, the manifest
    entry), at their offsets in a sparse file of the object's size; every other byte (the
    tiles) is left unfetched. `Container(target)` then validates and reads exactly what it
    would from a whole copy, so the check decides as on disk. An object that does not open
    as a zip here is copied whole (the check then reports it as it would a local file).
    False when there is no object at `url`."""
    if not remote.exists(url):
        return False
    size = int(remote.info(url).get("size") or 0)
    source = _RangedZipSource(url, size)
    try:
        with zipfile.ZipFile(source) as z:  # type: ignore[arg-type]
            info = z.NameToInfo.get(MANIFEST)
            cap = min(MAX_MANIFEST_BYTES, limits.current().max_entry_bytes)
            if info is not None and max(info.compress_size, info.file_size) <= cap:
                z.read(MANIFEST)
    except (*_ZIP_ERRORS, _IndexTooLarge):  # damaged, no zip, or an index beyond
        return remote.download(url, target)  # INDEX_MAX_BYTES: the whole object, as before
    with open(target, "wb") as f:
        f.truncate(size)  # sparse: the holes read as zeros and take no disk
        for start, data in sorted(source.blocks.items()):
            f.seek(start)
            f.write(data)
    return True
