"""OpenSlide backend: SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM (OpenSlide 4)."""

from __future__ import annotations

import ctypes
import functools
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
        return argb_to_rgb_on_white(buf)

    def close(self) -> None:
        self._slide.close()
