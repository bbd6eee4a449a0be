"""What a slide may declare, checked before any reader allocates for it (limits.py).

A hostile or damaged file must be refused in seconds with one line naming the file, the limit
and how to raise it, never hang or exhaust memory. Readers trust the structure a file declares:
libtiff and tifffile allocate tile tables and buffers from the declared sizes, OpenSlide aborts
the whole process when an allocation fails, and tifffile follows an IFD chain that loops after
its 100th IFD until it has read 2^32 of them. So TIFF-based files (SVS, generic TIFF, NDPI,
...) are walked here first with a small reader of our own that reads only IFD headers, bounded
by `max_pages`; then every opened slide's geometry is checked, whatever the format.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from .. import limits
from ..errors import SlideError
from .base import SlideInfo
from .discovery import slide_files

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# TIFF tags and field types read here (TIFF 6.0, BigTIFF)
_WIDTH, _LENGTH, _COMPRESSION, _PHOTOMETRIC = 256, 257, 259, 262
_SAMPLES, _ROWS_PER_STRIP, _PLANAR = 277, 278, 284
_TILE_WIDTH, _TILE_LENGTH, _SUBIFDS, _NDPI_FORMAT = 322, 323, 330, 65420
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_TYPE_SIZE.update({16: 8, 17: 8, 18: 8})
_UINT_FORMAT = {1: "B", 3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}
MAX_TAGS = 4096  # per IFD; real files have < 100 (tifffile refuses more too)


@dataclass(frozen=True)
class TiffPage:
    """One image file directory as declared (nothing decoded)."""

    offset: int
    width: int
    height: int
    tile: tuple[int, int] | None  # (width, length); None for strips
    rows_per_strip: int
    compression: int
    photometric: int | None
    samples: int
    planar: int


@dataclass(frozen=True)
class TiffLayout:
    pages: tuple[TiffPage, ...]
    bigtiff: bool
    file_bytes: int


def is_tiff(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) in TIFF_MAGIC


def _refuse(path: Path, what: str, name: str | None = None) -> SlideError:
    if name is None:
        return SlideError(f"{path.name}: {what} (damaged or hostile TIFF)")
    lim = getattr(limits.current(), name)
    return SlideError(f"{path.name}: {what}, over the limit {name}={lim}; {limits.hint(name)}")


def inspect_tiff(path: Path) -> TiffLayout | None:
    """Walk the IFD chains of a TIFF-based file (None if it is not one) and refuse loops, too
    many IFDs, and images, tiles or strips beyond the limits. Reads only IFD headers: a few KB
    and milliseconds, whatever the file declares."""
    with open(path, "rb") as f:
        return _Walker(path, f).walk()


def metadata_ranges(name: str, f, size: int) -> list[tuple[int, int]]:  # noqa: ANN001
    """(offset, length) of every byte a TIFF's structure occupies: the header, each IFD and
    each tag value stored outside its IFD (tile offsets, descriptions, JPEG tables ...),
    read from a file object `f` of `size` bytes (an object in a store, read by ranges), with
    the same checks and refusals as `inspect_tiff`. What a TIFF reader parses on open is
    there; the rest is pixel data. Empty when it is not a TIFF."""
    walker = _Walker(Path(name), f, size)
    if walker.walk() is None:
        return []
    return sorted(set(walker.ranges))


class _Walker:
    def __init__(self, path: Path, f, size: int | None = None) -> None:  # noqa: ANN001
        self.path, self.f = path, f
        self.size = path.stat().st_size if size is None else size
        self.lim = limits.current()
        self.ranges: list[tuple[int, int]] = []  # every structure byte range seen

    def read(self, offset: int, n: int) -> bytes:
        self.ranges.append((offset, n))
        self.f.seek(offset)
        data = self.f.read(n)
        if len(data) != n:
            raise _refuse(self.path, f"IFD data at byte {offset} runs past the end of the file")
        return data

    def walk(self) -> TiffLayout | None:
        head = self.read(0, 16) if self.size >= 16 else b""
        if head[:4] not in TIFF_MAGIC:
            return None
        self.bo = "<" if head[:2] == b"II" else ">"
        self.big = head[2:4] in (b"+\x00", b"\x00+")
        if self.big:
            first = struct.unpack(self.bo + "Q", head[8:16])[0]
            self.count_fmt, self.entry_size, self.off_fmt = "Q", 20, "Q"
        else:
            first = struct.unpack(self.bo + "I", head[4:8])[0]
            self.count_fmt, self.entry_size, self.off_fmt = "H", 12, "I"
        # NDPI: classic TIFF whose next-IFD offsets are 8 bytes (high half after the low one)
        self.ndpi = self.path.suffix.lower() == ".ndpi"
        seen: set[int] = set()
        pages: list[TiffPage] = []
        chains = [first]
        while chains:
            offset = chains.pop(0)
            while offset:
                if offset in seen:
                    raise _refuse(self.path, f"its IFD chain loops back to byte {offset}")
                if len(seen) >= self.lim.max_pages:
                    raise _refuse(self.path, f"more than {len(seen)} IFDs (pages)", "max_pages")
                if offset >= self.size:
                    break  # a chain ending past the file: every reader stops there too
                seen.add(offset)
                page, offset, subifds = self.ifd(offset, first=not pages)
                pages.append(page)
                chains.extend(subifds)
        if not pages:
            raise _refuse(self.path, "no image directory")
        return TiffLayout(tuple(pages), self.big, self.size)

    def ifd(self, offset: int, first: bool) -> tuple[TiffPage, int, list[int]]:
        csize = struct.calcsize(self.count_fmt)
        (n,) = struct.unpack(self.bo + self.count_fmt, self.read(offset, csize))
        if not 0 < n <= MAX_TAGS:
            raise _refuse(self.path, f"IFD at byte {offset} declares {n} tags")
        osize = struct.calcsize(self.off_fmt)
        raw = self.read(offset + csize, n * self.entry_size + osize)
        inline = 8 if self.big else 4
        values: dict[int, int] = {}
        subifds: list[int] = []
        for i in range(n):
            e = raw[i * self.entry_size : (i + 1) * self.entry_size]
            if self.big:
                tag, typ, count = struct.unpack(self.bo + "HHQ", e[:12])
                val = e[12:20]
            else:
                tag, typ, count = struct.unpack(self.bo + "HHI", e[:8])
                val = e[8:12]
            nbytes = _TYPE_SIZE.get(typ, 1) * count
            if nbytes > self.size:  # readers load whole tag arrays: they must be in the file
                raise _refuse(
                    self.path, f"tag {tag} declares {nbytes} bytes, more than the whole file"
                )
            if nbytes > inline:  # the value lives elsewhere in the file
                self.ranges.append((struct.unpack(self.bo + self.off_fmt, val)[0], nbytes))
            if tag == _NDPI_FORMAT and first:
                self.ndpi = not self.big
            if typ not in _UINT_FORMAT or count == 0:
                continue
            fmt = self.bo + _UINT_FORMAT[typ]
            if tag == _SUBIFDS:
                if count > self.lim.max_pages:
                    raise _refuse(self.path, f"IFD lists {count} SubIFDs", "max_pages")
                data = (
                    val[:nbytes]
                    if nbytes <= inline
                    else self.read(struct.unpack(self.bo + self.off_fmt, val)[0], nbytes)
                )
                subifds.extend(struct.unpack(self.bo + _UINT_FORMAT[typ] * count, data))
            elif nbytes <= inline:
                values[tag] = struct.unpack(fmt, val[: _TYPE_SIZE[typ]])[0]
        (nxt,) = struct.unpack(self.bo + self.off_fmt, raw[-osize:])
        if self.ndpi and not self.big:  # the high half follows the classic 4-byte offset
            end = offset + csize + len(raw)
            if end + 4 <= self.size:
                nxt |= struct.unpack(self.bo + "I", self.read(end, 4))[0] << 32
        page = self.check(offset, values)
        return page, nxt, subifds

    def check(self, offset: int, v: dict[int, int]) -> TiffPage:
        lim, path = self.lim, self.path
        w, h = v.get(_WIDTH, 0), v.get(_LENGTH, 0)
        if w < 1 or h < 1:
            raise _refuse(path, f"IFD at byte {offset} declares an empty {w} x {h} px image")
        if max(w, h) > lim.max_side:
            raise _refuse(path, f"declares a {w} x {h} px image", "max_side")
        pixels = w * h
        if pixels > lim.max_pixels:
            raise _refuse(path, f"declares a {w} x {h} px image ({pixels:.3g} px)", "max_pixels")
        if pixels > lim.max_pixels_per_byte * self.size:
            raise _refuse(
                path,
                f"declares a {w} x {h} px image in {self.size} bytes "
                f"({pixels / self.size:.3g} px per byte: a decompression bomb?)",
                "max_pixels_per_byte",
            )
        samples, planar = max(1, v.get(_SAMPLES, 1)), v.get(_PLANAR, 1)
        tile: tuple[int, int] | None = None
        rows = h
        if _TILE_WIDTH in v or _TILE_LENGTH in v:
            tw, th = v.get(_TILE_WIDTH, 0), v.get(_TILE_LENGTH, 0)
            if tw < 1 or th < 1:
                raise _refuse(path, f"declares {tw} x {th} px tiles")
            if max(tw, th) > lim.max_tile_side:
                raise _refuse(path, f"declares {tw} x {th} px tiles", "max_tile_side")
            tile = (tw, th)
            chunks = math.ceil(w / tw) * math.ceil(h / th)
        else:
            rows = min(v.get(_ROWS_PER_STRIP, h) or h, h)
            if rows * w > lim.max_tile_side**2:
                raise _refuse(
                    path, f"declares strips of {w} x {rows} px, decoded whole", "max_tile_side"
                )
            chunks = math.ceil(h / rows)
        if planar == 2:
            chunks *= samples
        if 4 * chunks > self.size:  # each tile or strip has (at least) a 4-byte offset
            raise _refuse(path, f"declares {chunks} tiles or strips in a {self.size}-byte file")
        return TiffPage(
            offset=offset,
            width=w,
            height=h,
            tile=tile,
            rows_per_strip=rows,
            compression=v.get(_COMPRESSION, 1),
            photometric=v.get(_PHOTOMETRIC),
            samples=samples,
            planar=planar,
        )


def source_bytes(path: Path) -> int | None:
    """Bytes that hold a slide's pixels: the file, the .dcm files of a DICOM folder, a MIRAX
    index plus its data folder; None where the pixels live in files we cannot enumerate."""
    if path.is_dir():
        return sum(f.stat().st_size for f in slide_files(path))
    suffix = path.suffix.lower()
    if suffix in (".vms", ".vmu"):
        return None
    total = path.stat().st_size
    data_dir = path.with_suffix("")
    if suffix == ".mrxs" and data_dir.is_dir():
        total += sum(c.stat().st_size for c in data_dir.iterdir() if c.is_file())
    return total


def check_info(info: SlideInfo, path: Path) -> None:
    """Refuse an opened slide whose geometry exceeds the limits, whatever its format, before
    anything reads its pixels."""
    lim = limits.current()
    name = path.name
    n = info.level_count
    if n < 1:
        raise SlideError(f"{name}: no pyramid level")
    if n > lim.max_levels:
        raise SlideError(
            f"{name}: {n} pyramid levels, over the limit max_levels={lim.max_levels}; "
            f"{limits.hint('max_levels')}"
        )
    for w, h in info.level_dimensions:
        if w < 1 or h < 1:
            raise SlideError(f"{name}: a pyramid level is empty ({w} x {h} px)")
        if max(w, h) > lim.max_side:
            raise SlideError(
                f"{name}: a {w} x {h} px level, over the limit max_side={lim.max_side}; "
                f"{limits.hint('max_side')}"
            )
    w0, h0 = info.dimensions
    if w0 * h0 > lim.max_pixels:
        raise SlideError(
            f"{name}: {w0} x {h0} px ({w0 * h0:.3g} px), over the limit "
            f"max_pixels={lim.max_pixels}; {limits.hint('max_pixels')}"
        )
    nbytes = source_bytes(path)
    if nbytes and w0 * h0 > lim.max_pixels_per_byte * nbytes:
        raise SlideError(
            f"{name}: {w0} x {h0} px declared in {nbytes} bytes ({w0 * h0 / nbytes:.3g} px per "
            f"byte: a decompression bomb?), over the limit max_pixels_per_byte="
            f"{lim.max_pixels_per_byte}; {limits.hint('max_pixels_per_byte')}"
        )
