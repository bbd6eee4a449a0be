"""wsidicom backend: a DICOM WSI series given as its folder (`discovery.dicom_folder`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SlideError
from .base import SlideInfo, SlideReader
from .discovery import dicom_folder, is_dicom_slide


class WsiDicomReader(SlideReader):
    name = "wsidicom"

    @classmethod
    def can_open(cls, path: Path) -> bool:
        return is_dicom_slide(path)

    def __init__(self, path: str | Path):
        super().__init__(path)
        from wsidicom import WsiDicom

        layout = dicom_folder(self.path) if self.path.is_dir() else None
        if layout is None or not layout.is_slide:
            raise SlideError(f"{self.path.name}: not a folder holding a DICOM WSI series")
        if len(layout.series) > 1:
            raise SlideError(
                f"{self.path.name}: holds {len(layout.series)} DICOM WSI series; put each "
                "slide's files in a folder of its own"
            )
        try:  # only the series' files: other slides may share the folder
            self._slide = WsiDicom.open(next(iter(layout.series.values())))
        except Exception as e:
            raise SlideError(f"{self.path.name}: wsidicom cannot open it ({e})") from None
        s = self._slide
        levels = list(s.levels)
        w0 = levels[0].size.width
        level_dims = tuple((lv.size.width, lv.size.height) for lv in levels)
        mpp = s.mpp
        self._ycbcr_levels = {i for i in range(len(levels)) if self._mislabelled_jfif(i)}
        self.info = SlideInfo(
            path=str(self.path),
            reader=self.name,
            vendor="dicom",
            dimensions=level_dims[0],
            level_dimensions=level_dims,
            level_downsamples=tuple(w0 / d[0] for d in level_dims),
            mpp=(float(mpp.width), float(mpp.height)) if mpp is not None else None,
            associated_images=tuple(
                n for n, present in (("label", s.labels), ("overview", s.overviews)) if present
            ),
        )

    def _mislabelled_jfif(self, level: int) -> bool:
        """JFIF JPEG frames are YCbCr by definition (JFIF spec); some converters still tag them
        PhotometricInterpretation=RGB, and decoders that trust the tag skip the colour
        transform (seen in the shared CMU-1 DICOM: levels 1-4 come out green/purple)."""
        try:
            photometric = self._slide.levels[level].datasets[0].photometric_interpretation
            frame = self._slide.read_encoded_tile(level, (0, 0))
        except Exception:
            return False
        return photometric == "RGB" and frame[:2] == b"\xff\xd8" and b"JFIF\x00" in frame[:32]

    def _read_level(self, lx: int, ly: int, level: int, width: int, height: int) -> np.ndarray:
        try:
            # wsidicom takes the location in the level's own pixel grid.
            img = self._slide.read_region((lx, ly), level, (width, height))
        except Exception as e:
            raise SlideError(
                f"{self.path.name}: unreadable pixels at level {level} ({lx}, {ly}): {e}"
            ) from None
        if level in self._ycbcr_levels:
            return np.asarray(
                Image.fromarray(np.asarray(img.convert("RGB")), "YCbCr").convert("RGB")
            )
        return np.asarray(img.convert("RGB"))

    def close(self) -> None:
        self._slide.close()
