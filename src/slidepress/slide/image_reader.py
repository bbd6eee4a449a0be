"""Plain images (PNG, JPEG, single-level TIFF) for small inputs; held in memory."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from .. import limits
from ..errors import SlideError
from .base import SlideInfo, SlideReader

_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
_PILLOW_LIMIT = threading.Lock()  # Image.MAX_IMAGE_PIXELS is process-global


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """`Image.open` that refuses a declared size over `limits.max_image_pixels` right after
    the header is read, before anything is decoded: a PNG or JPEG "bomb" declares 10^9+ pixels
    in a few KB, and plain images are decoded whole. Pillow's own guard
    (`Image.MAX_IMAGE_PIXELS`, an error at twice it) is set from the same limit during the
    call, so raising the limit raises both. Raises SlideError for the limit, Pillow's errors
    otherwise."""
    lim = limits.current()
    too_big = (
        f"{path.name}: image declares more pixels than the limit max_image_pixels="
        f"{lim.max_image_pixels} (plain images are decoded whole); "
        f"{limits.hint('max_image_pixels')}"
    )
    try:
        with _PILLOW_LIMIT, warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS; we refuse there ourselves, below. Its global
            # guard is set for this call only (other code in the process keeps its own).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, lim.max_image_pixels
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = before
    except Image.DecompressionBombError:
        raise SlideError(too_big) from None
    with im:
        w, h = im.size
        if w * h > lim.max_image_pixels:
            raise SlideError(f"{too_big} ({w} x {h} px)")
        yield im


def load_image_rgb(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Decode a plain image whole as RGB (transparent = no scan = white), and its dpi."""
    try:
        with open_image(path) as im:
            dpi = im.info.get("dpi")
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                pixels = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
            else:
                pixels = np.asarray(im.convert("RGB"))
    except SlideError:
        raise
    except Exception as e:
        raise SlideError(f"{path.name}: not a readable image ({e})") from None
    mpp_dpi = (float(dpi[0]), float(dpi[1])) if dpi and dpi[0] and dpi[1] else None
    return pixels, mpp_dpi


class ImageReader(SlideReader):
    name = "image"

    @classmethod
    def can_open(cls, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in _SUFFIXES

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._pixels, dpi = load_image_rgb(self.path)
        h, w = self._pixels.shape[:2]
        mpp = (25400.0 / dpi[0], 25400.0 / dpi[1]) if dpi else None
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
