"""OpenSlide backend: SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM (OpenSlide 4).

Closing is safe under reads: OpenSlide aborts the process (`_openslide_tiffcache_destroy:
assertion failed`) or segfaults when a handle is closed while a thread is inside
`openslide_read_region` on it. So `close()` during reads only marks the handle; the last read
in flight closes it as it returns (issue 19, item 3), and a read begun after `close()` is a
SlideError. openslide-python's own finaliser (it closes a handle when garbage-collected)
cannot fire during a read: the reading frame holds the handle.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideError
from .base import SlideInfo, SlideReader, argb_to_rgb_on_white, rgba_to_rgb_on_white


@functools.cache
def _low_level_read() -> tuple[Any, Any]:
    """openslide_read_region itself (ctypes releases the GIL while it runs) and its buffer
    pointer type, or Nones (imported on first read: `import openslide` stays lazy)."""
    try:
        from openslide import lowlevel

        return lowlevel._read_region, ctypes.POINTER(ctypes.c_uint32)
    except (ImportError, AttributeError):
        return None, None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class OpenSlideReader(SlideReader):
    name = "openslide"

    @classmethod
    def can_open(cls, path: Path) -> bool:
        import openslide

        return path.is_file() and openslide.OpenSlide.detect_format(str(path)) is not None

    def __init__(self, path: str | Path):
        super().__init__(path)
        import openslide

        self._reads_lock = threading.Lock()
        self._reads = 0  # openslide_read_region calls in flight on this handle
        self._closing = False  # close() was called; the last read in flight closes the handle
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError) as e:
            raise SlideError(f"{self.path.name}: OpenSlide cannot open it ({e})") from None
        s = self._slide
        props = dict(s.properties)
        mx, my = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
        self.info = SlideInfo(
            path=str(self.path),
            reader=self.name,
            vendor=props.get("openslide.vendor"),
            dimensions=tuple(s.dimensions),
            level_dimensions=tuple(tuple(d) for d in s.level_dimensions),
            level_downsamples=tuple(float(d) for d in s.level_downsamples),
            mpp=(mx, my) if mx and my else None,
            objective_power=_float(props.get("openslide.objective-power")),
            associated_images=tuple(s.associated_images),
            properties=props,
        )

    def _read_level(self, lx: int, ly: int, level: int, width: int, height: int) -> np.ndarray:
        import openslide

        ds = self.info.level_downsamples[level]
        x, y = round(lx * ds), round(ly * ds)  # OpenSlide rounds level-0 / downsample
        self._begin_read()
        try:
            read_into, uint32_p = _low_level_read()
            osr = getattr(self._slide, "_osr", None)
            if read_into is None or osr is None:  # an openslide-python without these internals
                return rgba_to_rgb_on_white(
                    np.asarray(self._slide.read_region((x, y), level, (width, height)))
                )
            # OpenSlide's own premultiplied ARGB buffer, composited in one pass: skips
            # openslide-python's un-premultiply, the PIL image and its copy (issue 9, part 7).
            buf = np.empty((height, width), np.uint32)
            read_into(osr, buf.ctypes.data_as(uint32_p), x, y, level, width, height)
        except openslide.OpenSlideError as e:
            raise SlideError(f"{self.path.name}: unreadable pixels at ({x}, {y}): {e}") from None
        finally:
            self._end_read()
        return argb_to_rgb_on_white(buf)

    def _begin_read(self) -> None:
        with self._reads_lock:
            if self._closing:
                raise SlideError(f"{self.path.name}: read after the slide was closed")
            self._reads += 1

    def _end_read(self) -> None:
        with self._reads_lock:
            self._reads -= 1
            last = self._closing and self._reads == 0
        if last:  # close() came during the reads: this thread closes the handle
            self._slide.close()

    def close(self) -> None:
        """Close the handle now, or (reads in flight in other threads) as the last one
        returns; a second call does nothing."""
        with self._reads_lock:
            if self._closing:
                return
            self._closing = True
            idle = self._reads == 0
        if idle:
            self._slide.close()
