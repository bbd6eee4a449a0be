"""DeepZoom tiles of a slide or a container, for the page's side-by-side viewer.

The level math is openslide.deepzoom.DeepZoomGenerator's (without `limit_bounds`): dz level
`n` halves level `n + 1` (rounding up) down to 1 x 1 px; each tile is `TILE` px plus `OVERLAP`
px on every side that has a neighbour; a tile is read from the deepest slide level that is
not coarser than it and resized (Lanczos). Slides open with `slide.open_slide`, so an upload
and a `.spz` result are served alike (the container reader decodes only the tiles a region
touches, with its own bounded cache).

A slide without a pyramid would make the coarse dz levels read most of level 0 for one tile:
those come from the slide's thumbnail (`SlideReader.thumbnail`, read once and bounded by the
open-time limits) instead, where one tile would read more than `THUMB_BEYOND` tiles' side squared of
the best slide level.

Readers are not thread-safe and opening one costs a header parse (a container checks its
manifest): `Slides` keeps the last `HANDLES` open, each behind its own lock.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

TILE = 254
OVERLAP = 1
FORMAT = "jpeg"
QUALITY = 75
HANDLES = 8  # open slides per process
THUMB_SIDE = 2048  # px, longest side of the thumbnail that serves the coarse levels
THUMB_BEYOND = 4  # a read over (4 x 254 px)^2 for one tile comes from the thumbnail


class TileNotFound(LookupError):
    """A level, column or row outside the pyramid."""


class _Closed(RuntimeError):
    """The handle was closed (evicted) while a request still held it: open it again."""


class DeepZoom:
    """The DeepZoom pyramid of one open slide reader."""

    def __init__(self, reader, tile_size: int = TILE, overlap: int = OVERLAP):
        self.reader, self.tile_size, self.overlap = reader, tile_size, overlap
        self.lock = threading.Lock()  # the reader is not thread-safe
        info = reader.info
        size = tuple(int(v) for v in info.dimensions)
        dims = [size]
        while size[0] > 1 or size[1] > 1:
            size = (max(1, math.ceil(size[0] / 2)), max(1, math.ceil(size[1] / 2)))
            dims.append(size)
        self.level_dimensions: list[tuple[int, int]] = dims[::-1]
        self.level_tiles = [(math.ceil(w / tile_size), math.ceil(h / tile_size))
                            for w, h in self.level_dimensions]  # fmt: skip
        self._thumb: tuple[np.ndarray, float, float] | None = None
        self.closed = False

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def dzi(self) -> str:
        w, h = self.level_dimensions[-1]
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{FORMAT}" '
            f'Overlap="{self.overlap}" TileSize="{self.tile_size}"><Size Width="{w}" '
            f'Height="{h}"/></Image>\n'
        )

    def tile_box(self, level: int, col: int, row: int) -> tuple[tuple[float, float],
                                                                  tuple[int, int]]:  # fmt: skip
        """The tile's top-left in level-0 pixels and its size in dz pixels; TileNotFound
        outside the pyramid."""
        if not 0 <= level < self.level_count:
            raise TileNotFound(f"level {level} is outside 0..{self.level_count - 1}")
        cols, rows = self.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileNotFound(f"tile {col}_{row} is outside level {level} ({cols} x {rows} tiles)")
        zw, zh = self.level_dimensions[level]
        t, o = self.tile_size, self.overlap
        tl = (o if col else 0, o if row else 0)
        br = (o if col < cols - 1 else 0, o if row < rows - 1 else 0)
        size = (min(t, zw - t * col) + tl[0] + br[0], min(t, zh - t * row) + tl[1] + br[1])
        ds = self.downsample(level)
        return ((t * col - tl[0]) * ds, (t * row - tl[1]) * ds), size

    def downsample(self, level: int) -> float:
        """Level-0 pixels per dz pixel of `level`."""
        return float(2 ** (self.level_count - 1 - level))

    def tile(self, level: int, col: int, row: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) pixels of one tile."""
        from PIL import Image

        (x0, y0), (zw, zh) = self.tile_box(level, col, row)
        ds = self.downsample(level)
        info = self.reader.info
        slide_level = self.reader.best_level_for_downsample(ds)
        l_ds = info.level_downsamples[slide_level]
        per_side = ds / l_ds  # slide-level pixels per dz pixel
        lw, lh = info.level_dimensions[slide_level]
        lx, ly = x0 / l_ds, y0 / l_ds
        rw = max(1, min(math.ceil(per_side * zw), lw - math.ceil(lx)))
        rh = max(1, min(math.ceil(per_side * zh), lh - math.ceil(ly)))
        if rw * rh > (THUMB_BEYOND * self.tile_size) ** 2:  # no pyramid level near this one
            thumb = self._thumbnail()
            if thumb[1] <= ds:
                return _resized(_crop(thumb[0], x0 / thumb[1], y0 / thumb[2],
                                      zw * ds / thumb[1], zh * ds / thumb[2]), zw, zh)  # fmt: skip
        with self.lock:
            if self.closed:
                raise _Closed
            region = self.reader.read_region((round(x0), round(y0)), slide_level, (rw, rh))
        if (rw, rh) == (zw, zh):
            return region
        return np.asarray(Image.fromarray(region).resize((zw, zh), Image.Resampling.LANCZOS))

    def jpeg(self, level: int, col: int, row: int, quality: int = QUALITY) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.tile(level, col, row)).save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    def _thumbnail(self) -> tuple[np.ndarray, float, float]:
        with self.lock:
            if self.closed:
                raise _Closed
            if self._thumb is None:
                img, _ = self.reader.thumbnail(THUMB_SIDE)
                w0, h0 = self.reader.info.dimensions
                self._thumb = (img, w0 / img.shape[1], h0 / img.shape[0])
            return self._thumb

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.reader.close()


def _crop(img: np.ndarray, x: float, y: float, w: float, h: float) -> np.ndarray:
    ih, iw = img.shape[:2]
    x0, y0 = min(max(0, math.floor(x)), iw - 1), min(max(0, math.floor(y)), ih - 1)
    x1, y1 = max(x0 + 1, min(iw, math.ceil(x + w))), max(y0 + 1, min(ih, math.ceil(y + h)))
    return img[y0:y1, x0:x1]


def _resized(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    if img.shape[:2] == (h, w):
        return np.ascontiguousarray(img)
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(
        (w, h), Image.Resampling.LANCZOS))  # fmt: skip


class Slides:
    """The last `size` slides asked for, open (least recently used closed first)."""

    def __init__(self, size: int = HANDLES):
        self.size = size
        self._open: OrderedDict[tuple[str, int], DeepZoom] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> DeepZoom:
        """The pyramid of the slide at `path` (SlideError if it cannot be opened)."""
        from ..slide import open_slide

        key = (str(path), path.stat().st_mtime_ns if path.exists() else 0)
        with self._lock:
            dz = self._open.get(key)
            if dz is not None:
                self._open.move_to_end(key)
                return dz
        dz = DeepZoom(open_slide(path))  # outside the lock: a slow open blocks no one else
        with self._lock:
            if key in self._open:  # another request opened it meanwhile
                dz.close()
                self._open.move_to_end(key)
                return self._open[key]
            self._open[key] = dz
            old = [self._open.popitem(last=False)[1] for _ in range(len(self._open) - self.size)]
        for o in old:  # waits for a tile being read from it to finish
            o.close()
        return dz

    def jpeg(self, path: Path, level: int, col: int, row: int) -> bytes:
        """One tile of the slide at `path` as JPEG (TileNotFound outside its pyramid)."""
        try:
            return self.get(path).jpeg(level, col, row)
        except _Closed:  # evicted by other slides' requests while this one read
            return self.get(path).jpeg(level, col, row)

    def clear(self) -> None:
        with self._lock:
            old, self._open = list(self._open.values()), OrderedDict()
        for o in old:
            o.close()
