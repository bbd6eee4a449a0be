"""Uploads: streamed to disk under a temporary name, size-capped, typed by content.

A file's name is only a label: it is sanitised (no folders, no traversal, no hidden files)
and the type comes from the first bytes. A DICOM slide arrives as a zip of its folder and is
unpacked member by member with the sizes actually written counted (a zip's declared sizes
are not trusted), so a zip bomb stops at the cap.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ..slide.discovery import is_dicom_slide

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
CHUNK = 1 << 20
SUFFIX = {"tiff": ".tiff", "dicom": "", "png": ".png", "jpeg": ".jpg", "zip": ".zip"}


class UploadRejected(Exception):
    """An upload the service refuses: `status` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def sanitize_filename(name: str | None, default: str = "upload") -> str:
    """A safe base name: the last path component, unsafe characters replaced, no leading
    dots, at most 120 characters. `../../etc/passwd` -> `passwd`; `/abs/x.svs` -> `x.svs`."""
    base = (name or "").replace("\\", "/").split("/")[-1]
    base = _UNSAFE.sub("_", base).lstrip("._-")
    if len(base) > 120:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 120 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 10 else base[:120]
    return base or default


def sniff(head: bytes) -> str | None:
    """The upload's type from its first bytes: tiff, zip, dicom, png, jpeg, or None."""
    if head[:4] in TIFF_MAGIC:
        return "tiff"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return None


def _tiff_suffixes() -> tuple[str, ...]:
    """Names a TIFF-family upload keeps (readers pick vendor formats by them): the suffixes
    of the reader that takes any TIFF."""
    from ..slide import READERS

    return READERS.entry("tiffslide").suffixes


def stored_name(filename: str, kind: str) -> str:
    """Keep the user's suffix when it matches the content (readers use it), else add one."""
    suffix = Path(filename).suffix.lower()
    if kind == "tiff" and suffix in _tiff_suffixes():
        return filename
    if kind == "png" and suffix == ".png":
        return filename
    if kind == "jpeg" and suffix in (".jpg", ".jpeg"):
        return filename
    if kind == "dicom" and suffix == ".dcm":
        return filename
    return filename + (SUFFIX.get(kind) or ".dcm")


@dataclass
class Received:
    path: Path  # a file, or a folder of DICOM files
    kind: str  # tiff | dicom | image | zip (a DICOM folder still to unpack)
    filename: str
    bytes: int
    sha256: str


async def receive(
    chunks: AsyncIterator[bytes], folder: Path, filename: str, limit: int
) -> Received:
    """Write the request body into `folder` (created) and return what arrived.

    Raises UploadRejected (413 over `limit`, 415 not a slide, 400 empty) and then leaves
    nothing behind.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".partial-{uuid.uuid4().hex}"
    digest, size, head = hashlib.sha256(), 0, b""
    try:
        with open(tmp, "wb") as f:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > limit:
                    raise UploadRejected(413, f"upload larger than the limit of {limit} bytes")
                if len(head) < 132:
                    head += chunk[: 132 - len(head)]
                    if len(head) >= 132 and sniff(head) is None:
                        raise UploadRejected(415, _not_a_slide(filename))
                digest.update(chunk)
                f.write(chunk)
        if size == 0:
            raise UploadRejected(400, "empty upload")
        kind = sniff(head)
        if kind is None:
            raise UploadRejected(415, _not_a_slide(filename))
        if kind == "zip":  # unpacked by extract_dicom_zip, off the event loop
            target = folder / "upload.zip"
            tmp.rename(target)
            return Received(target, "zip", filename, size, digest.hexdigest())
        target = folder / stored_name(filename, kind)
        tmp.rename(target)
        family = "image" if kind in ("png", "jpeg") else kind
        return Received(target, family, filename, size, digest.hexdigest())
    except BaseException:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _not_a_slide(filename: str) -> str:
    return (
        f"{filename}: not a slide (expected a TIFF-based slide such as SVS or pyramidal "
        "TIFF, a zip of a DICOM slide folder, a DICOM file, or a PNG/JPEG image)"
    )


def extract_dicom_zip(
    zip_path: Path, target: Path, max_bytes: int = 40 * 1024**3, max_members: int = 20_000
) -> int:
    """Unpack the DICOM files of a zip into `target` (flat, sanitised names); return the
    count. Folders in the zip are ignored; non-DICOM members are skipped."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UploadRejected(415, f"unreadable zip: {e}") from None
    tmp = target.with_name(f".partial-{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    written = count = 0
    try:
        with zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > max_members:
                raise UploadRejected(413, f"zip holds {len(infos)} files (limit {max_members})")
            for info in infos:
                name = sanitize_filename(info.filename, default=f"member{count}")
                dest = tmp / name
                if dest.exists():
                    dest = tmp / f"{count}_{name}"
                is_dicom = False
                with zf.open(info) as src, open(dest, "wb") as out:
                    head = src.read(132)
                    is_dicom = head[128:132] == b"DICM"
                    if is_dicom:
                        out.write(head)
                        written += len(head)
                        while chunk := src.read(CHUNK):
                            written += len(chunk)
                            if written > max_bytes:
                                raise UploadRejected(
                                    413, f"zip unpacks to more than {max_bytes} bytes"
                                )
                            out.write(chunk)
                if is_dicom:
                    count += 1
                else:
                    dest.unlink()
        if count == 0:
            raise UploadRejected(415, "the zip holds no DICOM files (a DICOM slide folder)")
        if not is_dicom_slide(tmp):  # the rule every folder of slides follows
            raise UploadRejected(
                415, "the zip's DICOM files hold no whole-slide image (no WSI volume series)"
            )
        tmp.rename(target)
        return count
    except UploadRejected:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, zlib.error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UploadRejected(415, f"corrupt or unsupported zip: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
