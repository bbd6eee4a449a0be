"""Slide I/O: one reader interface, several backends, chosen automatically by probing the file.

Every file is first checked against the limits (slide/guard.py: a TIFF's IFD chain walked and
bounded, then the opened geometry), so a hostile file is refused before any reader allocates.
Preference for files: the tifffile fast path for plain tiled TIFFs whose pixels it decodes
exactly as OpenSlide does (Aperio SVS with JPEG, generic pyramidal TIFF: 2.5-7x faster, see
slide/tifffile_reader.py), then OpenSlide (if it recognises the format), tiffslide (any TIFF),
plain image. Folders of .dcm files go to wsidicom. `reader=` overrides the choice.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import SlideError
from . import (  # noqa: F401 (register)
    dicom_reader,
    image_reader,
    openslide_reader,
    tifffile_reader,
    tiffslide_reader,
)
from .base import SlideInfo, SlideReader, plausible_mpp
from .guard import check_info, inspect_tiff
from .registry import READERS

__all__ = [
    "READERS",
    "SAMPLE_NAME",
    "SlideInfo",
    "SlideReader",
    "open_slide",
    "plausible_mpp",
    "resolve_slide_path",
    "sample_slide_path",
]

AUTO_ORDER = ("tifffile", "openslide", "tiffslide", "wsidicom", "image")
SAMPLE_NAME = "@sample"


def sample_slide_path() -> Path:
    """OpenSlide's CMU-1-Small-Region.svs (freely redistributable), shipped with the package."""
    return Path(str(resources.files("slidepress") / "data" / "CMU-1-Small-Region.svs"))


def resolve_slide_path(path: str | Path) -> Path:
    return sample_slide_path() if str(path) == SAMPLE_NAME else Path(path)


def open_slide(path: str | Path, reader: str | None = None) -> SlideReader:
    """Open `path` with the named reader, or the first backend that recognises it.

    Refuses (SlideError, one line naming the limit) a file that declares more than the limits
    allow, before any backend sees it (TIFF structure) or reads a pixel (geometry)."""
    p = resolve_slide_path(path)
    if not p.exists():
        raise SlideError(f"{p}: no such file or folder")
    if p.is_file() and p.stat().st_size == 0:
        raise SlideError(f"{p.name}: empty file (0 bytes)")
    if reader is not None and reader not in READERS:
        raise SlideError(f"unknown reader {reader!r}; choose from {', '.join(READERS)}")
    if p.is_file():
        inspect_tiff(p)  # before OpenSlide's format probe: libtiff itself can loop or abort
    opened = READERS[reader](p) if reader is not None else _open_auto(p)
    try:
        check_info(opened.info, p)
    except BaseException:
        opened.close()
        raise
    return opened


def _open_auto(p: Path) -> SlideReader:
    candidates = [n for n in AUTO_ORDER if READERS[n].can_open(p)]
    if not candidates:
        if p.is_dir():
            raise SlideError(f"{p}: folder holds no slide (no .dcm files)")
        raise SlideError(f"{p.name}: not a recognised slide or image format")
    first_error: SlideError | None = None
    for name in candidates:
        try:
            return READERS[name](p)
        except tifffile_reader.NotPreferred:
            continue  # the fast path does not apply; the next backend will say what is wrong
        except SlideError as e:
            first_error = first_error or e
    assert first_error is not None
    raise first_error
