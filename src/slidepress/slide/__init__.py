"""Slide I/O: one reader interface, several backends, chosen automatically by probing the file.

Every file is first checked against the limits (slide/guard.py: a TIFF's IFD chain walked and
bounded, then the opened geometry), so a hostile file is refused before any reader allocates.
Preference for files: the tifffile fast path for plain tiled TIFFs whose pixels it decodes
exactly as OpenSlide does (Aperio SVS with JPEG, generic pyramidal TIFF: 2.5-7x faster, see
slide/tifffile_reader.py), then OpenSlide (if it recognises the format), tiffslide (any TIFF),
plain image. Folders of .dcm files go to wsidicom; a slidepress container (.spz, a ZIP) goes
to the spz reader (slide/spz_reader.py), so a compressed slide is a slide source like any
other. `reader=` overrides the choice.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import MppError, SlideError
from ..registry import Registry
from .base import SlideInfo, SlideReader, plausible_mpp
from .discovery import refuse_non_wsi_dicom
from .guard import check_info, inspect_tiff

READERS: Registry[type[SlideReader]] = Registry("reader", SlideError, name_attr="name")
# Registration order is the order of automatic choice. `suffixes`: the files a folder is
# searched for (slide/discovery.py) and uploads are named by; readers still probe contents.
READERS.add(
    "spz",
    "slidepress.slide.spz_reader:SpzReader",
    suffixes=(".spz",),  # probed by the ZIP signature, which no other format here has
    summary="slidepress container: coded tiles decoded on demand",
)
READERS.add(
    "tifffile",
    "slidepress.slide.tifffile_reader:TiffFileReader",
    suffixes=(".svs", ".tif", ".tiff"),
    summary="plain tiled SVS / generic TIFF, tiles decoded directly",
)
READERS.add(
    "openslide",
    "slidepress.slide.openslide_reader:OpenSlideReader",
    suffixes=(
        ".svs",
        ".tif",
        ".tiff",
        ".ndpi",
        ".mrxs",
        ".scn",
        ".vms",
        ".vmu",
        ".bif",
        ".svslide",
        ".dcm",
    ),  # fmt: skip
    summary="OpenSlide 4: SVS, NDPI, MRXS, SCN, generic TIFF, DICOM file",
)
READERS.add(
    "tiffslide",
    "slidepress.slide.tiffslide_reader:TiffSlideReader",
    suffixes=(".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff", ".btf"),
    summary="tiffslide: any TIFF OpenSlide refuses",
)
READERS.add(
    "wsidicom",
    "slidepress.slide.dicom_reader:WsiDicomReader",
    suffixes=(".dcm",),  # the files of a series; the slide is their folder
    summary="a folder of DICOM WSI files",
)
READERS.add(
    "image",
    "slidepress.slide.image_reader:ImageReader",
    suffixes=(".png", ".jpg", ".jpeg", ".tif", ".tiff"),
    summary="PNG / JPEG / single-level TIFF held in memory",
)

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

SAMPLE_NAME = "@sample"
MPP_SOURCES = ("override", "table")  # where an override may come from (else "file")


def sample_slide_path() -> Path:
    """OpenSlide's CMU-1-Small-Region.svs (freely redistributable), shipped with the package."""
    return Path(str(resources.files("slidepress") / "data" / "CMU-1-Small-Region.svs"))


def resolve_slide_path(path: str | Path) -> Path:
    return sample_slide_path() if str(path) == SAMPLE_NAME else Path(path)


def open_slide(
    path: str | Path,
    reader: str | None = None,
    mpp_override: float | None = None,
    *,
    mpp_source: str = "override",
) -> SlideReader:
    """Open `path` with the named reader, or the first backend that recognises it, and settle
    its level-0 resolution once: `mpp_override` (from the command line, or a table with
    `mpp_source="table"`) if given and plausible, else the file's value if plausible. The
    reader exposes `mpp` and `mpp_source`; an unknown or implausible file value is not an
    error here (`info` shows it) but in `require_mpp()`, which pipelines call.

    Refuses (SlideError, one line naming the limit) a file that declares more than the limits
    allow, before any backend sees it (TIFF structure) or reads a pixel (geometry)."""
    from .mpp import check_override, file_mpp

    if mpp_source not in MPP_SOURCES:
        raise ValueError(f"mpp_source must be one of {MPP_SOURCES}, got {mpp_source!r}")
    p = resolve_slide_path(path)
    if mpp_override is not None:
        check_override(p, mpp_override)  # before opening: a bad value costs nothing
    if not p.exists():
        raise SlideError(f"{p}: no such file or folder")
    if p.is_file() and p.stat().st_size == 0:
        raise SlideError(f"{p.name}: empty file (0 bytes)")
    if reader is not None and reader not in READERS:
        raise READERS.unknown(reader)
    if reader not in (None, "tifffile"):  # a slide read by ranges: only the fast path can
        from .ranged import whole

        p = whole(p)
    if p.is_file():
        refuse_non_wsi_dicom(p)
        inspect_tiff(p)  # before OpenSlide's format probe: libtiff itself can loop or abort
    opened = READERS[reader](p) if reader is not None else _open_auto(p)
    try:
        check_info(opened.info, p)
    except BaseException:
        opened.close()
        raise
    if mpp_override is not None:
        opened.mpp, opened.mpp_source = float(mpp_override), mpp_source
    else:
        try:
            opened.mpp, opened.mpp_source = file_mpp(opened.info), "file"
        except MppError as e:
            opened.mpp_problem = str(e)
    opened._opened_with = {
        "reader": opened.info.reader,
        "mpp_override": mpp_override,
        "mpp_source": mpp_source,
    }
    return opened


def _open_auto(p: Path) -> SlideReader:
    from .tifffile_reader import NotPreferred

    candidates = [n for n in READERS if READERS[n].can_open(p)]
    if not candidates:
        if p.is_dir():
            raise SlideError(f"{p}: folder holds no DICOM WSI series (give a slide file)")
        raise SlideError(f"{p.name}: not a recognised slide or image format")
    first_error: SlideError | None = None
    for name in candidates:
        try:
            return READERS[name](p)
        except NotPreferred:
            continue  # the fast path does not apply; the next backend will say what is wrong
        except SlideError as e:
            first_error = first_error or e
    assert first_error is not None
    raise first_error
