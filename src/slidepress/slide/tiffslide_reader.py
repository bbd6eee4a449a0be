"""tiffslide backend: pure-Python fallback for TIFF-based slides OpenSlide does not take."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from ..errors import SlideError
from .base import SlideInfo, SlideReader

# tifffile logs warnings for damaged files; we report them as one SlideError line instead.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


@functools.cache
def _level_slide_class() -> type:
    """tiffslide.TiffSlide taking `read_region` locations in the level's own pixels.

    tiffslide maps level-0 locations with int(x / downsample); going level -> level-0 -> level
    through floats can land one pixel off at non-integer downsamples. Overriding this hook is
    what tiffslide documents for changing that interpretation."""
    import tiffslide

    class LevelTiffSlide(tiffslide.TiffSlide):
        def _read_region_loc_transform(
            self, location: tuple[int, int], level: int
        ) -> tuple[int, int]:
            return int(location[0]), int(location[1])

    return LevelTiffSlide


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class TiffSlideReader(SlideReader):
    name = "tiffslide"

    @classmethod
    def can_open(cls, path: Path) -> bool:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC

    def __init__(self, path: str | Path):
        super().__init__(path)
        try:
            self._slide = _level_slide_class()(str(self.path))
            s = self._slide
            props = {k: str(v) for k, v in s.properties.items() if v is not None}
            dims = tuple(s.dimensions)
            level_dims = tuple(tuple(d) for d in s.level_dimensions)
            downs = tuple(float(d) for d in s.level_downsamples)
        except Exception as e:  # tifffile raises many types on hostile input
            raise SlideError(f"{self.path.name}: tiffslide cannot open it ({e})") from None
        self._check_complete()
        mx, my = props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")
        obj = props.get("tiffslide.objective-power")
        self.info = SlideInfo(
            path=str(self.path),
            reader=self.name,
            vendor=props.get("tiffslide.vendor") or "generic-tiff",  # OpenSlide's name
            dimensions=dims,
            level_dimensions=level_dims,
            level_downsamples=downs,
            mpp=(float(mx), float(my)) if mx and my else None,
            objective_power=float(obj) if obj else None,
            associated_images=tuple(s.associated_images),
            properties=props,
        )

    def _check_complete(self) -> None:
        """Refuse truncated files up front: every tile must lie inside the file. Otherwise the
        damage shows only mid-read, from inside tiffslide's async zarr store."""
        tif = self._slide.ts_tifffile
        size = tif.filehandle.size
        for page in tif.pages:
            ends = [o + b for o, b in zip(page.dataoffsets, page.databytecounts, strict=False)]
            if any(b == 0 for b in page.databytecounts) or (ends and max(ends) > size):
                self._slide.close()
                raise SlideError(f"{self.path.name}: truncated or damaged TIFF (tiles missing)")

    def _read_level(self, lx: int, ly: int, level: int, width: int, height: int) -> np.ndarray:
        try:  # level coordinates straight through (see _level_slide_class)
            arr = self._slide.read_region(
                (lx, ly), level, (width, height), as_array=True, padding=False
            )
        except Exception as e:
            raise SlideError(
                f"{self.path.name}: unreadable pixels at level {level} ({lx}, {ly}): {e}"
            ) from None
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return np.ascontiguousarray(arr[..., :3])

    def close(self) -> None:
        self._slide.close()
