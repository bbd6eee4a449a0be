"""Which slides a folder holds: slide files, and DICOM WSI series kept together as folders.

One rule for every command that takes a folder (`encode`/`compress` with a folder argument,
`batch`, the service's zip uploads), documented in the README:

- A folder is a *DICOM WSI slide* when its `.dcm` files hold the volume images of a DICOM
  whole-slide series (SOP class VL Whole Slide Microscopy Image, ImageType VOLUME) — what
  wsidicom opens as one slide. Its label, overview and thumbnail instances belong to it.
- Everything else in a folder is a slide of its own: slide files by suffix, and `.dcm` files
  that are not part of a WSI series (a lone DICOM image is tried as a slide file and fails on
  its own if it is not one). A stray `.dcm` never hides the other slides of a folder.

Discovery reads only the first bytes and the header of `.dcm` files, never pixels, so an
unreadable file is found here and fails when it is opened, while the others run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SlideError


def slide_suffixes() -> frozenset[str]:
    """File suffixes a folder is searched for: those the READERS entries declare."""
    from . import READERS

    return frozenset(s for name in READERS for s in READERS.entry(name).suffixes)


DICOM_SUFFIX = ".dcm"
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
_TAGS = ["SOPClassUID", "SeriesInstanceUID", "ImageType"]


@dataclass(frozen=True)
class DicomFolder:
    """The `.dcm` files of one folder, sorted into WSI series and the rest."""

    series: dict[str, list[Path]] = field(default_factory=dict)  # series UID -> its files
    others: list[Path] = field(default_factory=list)  # not part of a WSI series with volumes

    @property
    def is_slide(self) -> bool:
        return bool(self.series)


def _header(path: Path) -> tuple[str, str, bool] | None:
    """(SOP class UID, series UID, is a volume image) of a DICOM file; None when it is not a
    readable DICOM Part 10 file. Large values are not loaded (defer_size)."""
    try:
        with open(path, "rb") as f:
            if f.read(132)[128:132] != b"DICM":
                return None
    except OSError:
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS, defer_size=4096)
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        return (
            str(ds.get("SOPClassUID", "")),
            str(ds.get("SeriesInstanceUID", "")),
            ("VOLUME" in image_type),
        )
    except Exception:  # a damaged header: the file fails on its own when opened
        return None


def slides_at_url(url: str, recursive: bool = False) -> list[str]:
    """The slides under a URL prefix (remote.py lists it; nothing is fetched): slide files
    by suffix, and each prefix holding `.dcm` files as one DICOM WSI folder (their headers
    are read when the folder is staged and opened, not here)."""
    from .. import remote

    suffixes = slide_suffixes() - {DICOM_SUFFIX}
    found: list[str] = []
    dicom: list[str] = []
    for f in remote.listing(url, recursive=recursive):
        folder, _, fname = f.rpartition("/")
        suffix = "." + fname.rsplit(".", 1)[-1].lower() if "." in fname else ""
        if suffix == DICOM_SUFFIX:
            if folder not in dicom:
                dicom.append(folder)
        elif suffix in suffixes:
            found.append(f)
    return sorted(found + dicom)


def refuse_non_wsi_dicom(path: Path) -> None:
    """A lone DICOM file that is not a whole-slide image (a CT slice, a photo) fails with a
    message that says so, not as a damaged TIFF (DICOM's preamble may look like one)."""
    h = _header(path)
    if h is not None and h[0] != WSI_SOP_CLASS:
        raise SlideError(
            f"{path.name}: a DICOM file but not a whole-slide image (SOP class {h[0] or '?'}); "
            "slidepress reads DICOM WSI series"
        )


def dicom_folder(folder: str | Path) -> DicomFolder:
    """Sort the `.dcm` files directly in `folder` (hidden ones left out)."""
    folder = Path(folder)
    try:
        files = sorted(
            p for p in folder.iterdir()
            if p.suffix.lower() == DICOM_SUFFIX and not p.name.startswith(".") and p.is_file()
        )  # fmt: skip
    except OSError:
        return DicomFolder()
    wsi: dict[str, list[Path]] = {}
    volumes: set[str] = set()
    others: list[Path] = []
    for p in files:
        h = _header(p)
        if h is None or h[0] != WSI_SOP_CLASS:
            others.append(p)
            continue
        _, uid, volume = h
        wsi.setdefault(uid, []).append(p)
        if volume:
            volumes.add(uid)
    series = {uid: fs for uid, fs in wsi.items() if uid in volumes}
    for uid, fs in wsi.items():  # a label or overview without its volumes is no slide
        if uid not in volumes:
            others.extend(fs)
    return DicomFolder(series, sorted(others))


def slide_files(path: str | Path) -> list[Path]:
    """The files that hold a slide's pixels and define its content key: the series files of
    a DICOM WSI folder (not the other slides beside them), else the file itself."""
    path = Path(path)
    if path.is_dir():
        return sorted(f for fs in dicom_folder(path).series.values() for f in fs)
    return [path]


def is_dicom_slide(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and dicom_folder(folder).is_slide


def _is_slide_file(p: Path, suffixes: frozenset[str]) -> bool:
    return not p.name.startswith(".") and p.suffix.lower() in suffixes and p.is_file()


def slides_in(
    folder: str | Path, *, recursive: bool = False, skip: Path | None = None
) -> list[Path]:
    """The slides a folder holds, sorted: the folder itself when it is a DICOM WSI slide,
    its other slide files (`.dcm` files outside its series among them), and DICOM WSI
    sub-folders; with `recursive`, the same for every sub-folder (hidden ones and `skip`,
    the output folder when it lies inside, left out)."""
    where = skip.resolve() if skip else None
    return sorted(_walk(Path(folder), recursive, where, slide_suffixes()))


def _walk(
    folder: Path, recursive: bool, skip: Path | None, suffixes: frozenset[str]
) -> Iterator[Path]:
    layout = dicom_folder(folder)
    in_series = {p for fs in layout.series.values() for p in fs}
    if layout.is_slide:
        yield folder
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for p in entries:
        if p.name.startswith(".") or p in in_series:
            continue
        if p.is_dir():
            if skip is not None and p.resolve() == skip:
                continue
            if recursive and not p.is_symlink():  # a linked folder could loop back
                yield from _walk(p, recursive, skip, suffixes)
            elif is_dicom_slide(p):
                yield p
        elif _is_slide_file(p, suffixes):
            yield p
