"""Plain images (PNG, JPEG, single-level TIFF) for small inputs; held in memory."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SlideError
from .base import SlideInfo, SlideReader
from .registry import register_reader

_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


@register_reader("image")
class ImageReader(SlideReader):
    @classmethod
    def can_open(cls, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in _SUFFIXES

    def __init__(self, path: str | Path):
        super().__init__(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(self.path) as im:
                    dpi = im.info.get("dpi")
                    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                        # transparent = no scan: composite on white like the OpenSlide path
                        rgba = im.convert("RGBA")
                        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                        self._pixels = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
                    else:
                        self._pixels = np.asarray(im.convert("RGB"))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise SlideError(
                f"{self.path.name}: image too large for the plain reader ({e})"
            ) from None
        except Exception as e:
            raise SlideError(f"{self.path.name}: not a readable image ({e})") from None
        h, w = self._pixels.shape[:2]
        mpp = None
        if dpi and dpi[0] and dpi[1]:
            mpp = (25400.0 / float(dpi[0]), 25400.0 / float(dpi[1]))
        self.info = SlideInfo(
            path=str(self.path),
            reader=self.name,
            vendor=None,
            dimensions=(w, h),
            level_dimensions=((w, h),),
            level_downsamples=(1.0,),
            mpp=mpp,
        )

    def _read_level(self, lx: int, ly: int, level: int, width: int, height: int) -> np.ndarray:
        return np.ascontiguousarray(self._pixels[ly : ly + height, lx : lx + width])
