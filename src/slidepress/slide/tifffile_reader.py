"""Fast path for plain tiled TIFFs (Aperio SVS, generic pyramidal TIFF): OpenSlide describes the
slide, tifffile/imagecodecs decode its tiles straight into the output array.

Why: on JPEG-tiled TIFFs OpenSlide decodes the same tiles with the same libjpeg-turbo, then
composites them through cairo into premultiplied ARGB, which we turn back into RGB; reading the
tiles ourselves is 2.5-7x faster per 1024^2 block (benchmarks/bench_readers.py), scales with
threads (tiffslide does not), and needs no zarr (tiffslide's 1.4 s import). The pixels are
the file's own: equal to OpenSlide's wherever OpenSlide reads at whole level pixels (level 0,
integer downsamples); where a level's downsample is not an integer, OpenSlide lands between
stored pixels and interpolates (up to ~40 grey levels at edges), while this reader returns the
stored pixels at the level coordinates the `SlideReader` contract asks for.
tests/test_readers.py checks both on every shared slide and on generated pyramids.

Used only where that identity was verified: OpenSlide vendor aperio or generic-tiff, every
level a tiled, chunky, 8-bit RGB/YCbCr page with a lossless or JPEG compression, OpenSlide's
levels equal to those pages. Anything else raises `NotPreferred`, and the automatic choice
falls back to OpenSlide (JPEG 2000 SVS, NDPI, Philips, Ventana, ...).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideError
from .guard import is_tiff
from .openslide_reader import OpenSlideReader

FAST_VENDORS = ("aperio", "generic-tiff")
# none, LZW, JPEG, Adobe deflate, deflate: lossless ones decode identically by definition,
# JPEG was compared pixel for pixel with OpenSlide (tests/test_readers.py)
FAST_COMPRESSIONS = frozenset({1, 5, 7, 8, 32946})
FAST_PHOTOMETRIC = {2: FAST_COMPRESSIONS, 6: frozenset({7})}  # RGB; YCbCr only inside JPEG


class NotPreferred(SlideError):
    """The file opens, but not with this reader's guarantees: use another backend."""


@dataclass(frozen=True)
class _Level:
    width: int
    height: int
    tile_w: int
    tile_h: int
    tiles_across: int
    offsets: np.ndarray
    counts: np.ndarray
    tables: bytes | None
    decode: Any  # tifffile's decode closure for this page


class TiffFileReader(OpenSlideReader):
    name = "tifffile"

    @classmethod
    def can_open(cls, path: Path) -> bool:
        import openslide

        return is_tiff(path) and openslide.OpenSlide.detect_format(str(path)) in FAST_VENDORS

    def __init__(self, path: str | Path):
        super().__init__(path)  # OpenSlide: geometry, mpp, properties, associated images
        from .ranged import source_for

        self._ranges = source_for(self.path)  # a slide in a store: tiles fetched by ranges
        if self._ranges is not None:  # OpenSlide hashed the holes of the sparse copy
            self.info.properties.pop("openslide.quickhash-1", None)
        try:
            self._levels = self._map_levels()
            self._fd: int | None = os.open(self.path, os.O_RDONLY)
        finally:
            # Pixels never come from OpenSlide here: its handle (libtiff, tile cache) goes now,
            # so no OpenSlide state outlives open or is shared with reading threads.
            self._slide.close()
        self._lock = threading.Lock()  # only where os.pread is missing

    def _map_levels(self) -> list[_Level]:
        import tifffile

        vendor = self.info.vendor
        if vendor not in FAST_VENDORS:
            raise NotPreferred(f"{self.path.name}: vendor {vendor!r}, not a plain tiled TIFF")
        try:
            with tifffile.TiffFile(self.path) as tif:
                pages = [p for p in tif.pages if p.is_tiled]
                levels = []
                for lw, lh in self.info.level_dimensions:
                    page = next(p for p in pages if p.imagewidth == lw and p.imagelength == lh)
                    levels.append(self._level(page, lw, lh))
        except StopIteration:
            raise NotPreferred(f"{self.path.name}: a level is not one tiled page") from None
        except SlideError:  # NotPreferred, or a truncated file
            raise
        except Exception as e:
            raise NotPreferred(f"{self.path.name}: tifffile cannot map its levels ({e})") from None
        return levels

    def _level(self, page: Any, lw: int, lh: int) -> _Level:
        comp, photo = int(page.compression), int(page.photometric)
        if (
            page.dtype != np.uint8
            or page.samplesperpixel != 3
            or int(page.planarconfig) != 1
            or page.imagedepth != 1
            or comp not in FAST_PHOTOMETRIC.get(photo, ())
        ):
            raise NotPreferred(
                f"{self.path.name}: page {page.index} is not 8-bit RGB with a verified "
                f"compression (compression {comp}, photometric {photo})"
            )
        tw, th = page.tilewidth, page.tilelength
        offsets = np.asarray(page.dataoffsets, np.int64)
        counts = np.asarray(page.databytecounts, np.int64)
        across = -(-lw // tw)
        if len(offsets) < across * -(-lh // th) or len(counts) != len(offsets):
            raise NotPreferred(f"{self.path.name}: page {page.index} lacks tile offsets")
        if len(counts) and int((offsets + counts).max()) > page.parent.filehandle.size:
            raise SlideError(f"{self.path.name}: truncated or damaged TIFF (tiles missing)")
        return _Level(lw, lh, tw, th, across, offsets, counts, page.jpegtables, page.decode)

    def _pread(self, offset: int, n: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._fd, n, offset)
        with self._lock:
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, n)

    def _fetch(self, lv: _Level, indices: list[int]) -> dict[int, bytes]:
        """The coded bytes of tiles (sparse ones left out): from the file, or from the store
        in one batch of range requests."""
        wanted = [(i, int(lv.offsets[i]), int(lv.counts[i])) for i in indices if lv.counts[i]]
        if self._ranges is not None:
            datas = self._ranges.read([(o, n) for _, o, n in wanted])
            return {i: d for (i, _, _), d in zip(wanted, datas, strict=True)}
        return {i: self._pread(o, n) for i, o, n in wanted}

    def _read_level(self, lx: int, ly: int, level: int, width: int, height: int) -> np.ndarray:
        lv = self._levels[level]
        out = np.empty((height, width, 3), np.uint8)
        tx0, tx1 = lx // lv.tile_w, (lx + width - 1) // lv.tile_w
        ty0, ty1 = ly // lv.tile_h, (ly + height - 1) // lv.tile_h
        coded = self._fetch(
            lv,
            [ty * lv.tiles_across + tx for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)],
        )
        for ty in range(ty0, ty1 + 1):
            y0 = ty * lv.tile_h
            sy0, sy1 = max(ly, y0), min(ly + height, y0 + lv.tile_h)
            for tx in range(tx0, tx1 + 1):
                x0 = tx * lv.tile_w
                sx0, sx1 = max(lx, x0), min(lx + width, x0 + lv.tile_w)
                dst = out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx]
                index = ty * lv.tiles_across + tx
                n = int(lv.counts[index])
                if n == 0:  # a sparse TIFF's missing tile: not scanned, white (as OpenSlide)
                    dst[...] = 255
                    continue
                try:
                    data = coded[index]
                    tile = lv.decode(data, index, jpegtables=lv.tables)[0]
                    dst[...] = tile[0, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0, :3]
                except Exception as e:
                    raise SlideError(
                        f"{self.path.name}: unreadable tile {index} of level {level}: {e}"
                    ) from None
        return out

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
