"""Uploads: streamed to disk under a temporary name, size-capped, typed by content.

A file's name is only a label: it is sanitised (no folders, no traversal, no hidden files)
and the type comes from the first bytes. A DICOM slide arrives as a zip of its folder and is
unpacked member by member with the sizes actually written counted (a zip's declared sizes
are not trusted), so a zip bomb stops at the cap: the upload limit or the user's remaining
quota, whichever is lower; a member deflated more than `max_ratio` times is refused before a
byte of it is written.

A slidepress container (`.spz`, the output of a compress job) is a zip too: one that holds
the container's `manifest.json` (or is named `.spz`) is kept whole as a file upload of kind
`container`, after the container's own validation (`store.container.Container`: entry names,
stored-only entries, sizes, the manifest's schema, every tile a declared cell, CRCs), so a
tampered container is refused (422) with that one message, and nothing is unpacked.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import unicodedata
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ..slide.discovery import is_dicom_slide

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# characters a stored name never holds: path separators and what shells or Windows treat
# specially; Unicode separators (spaces) and control characters are dropped by category
_UNSAFE = set('/\\:*?"<>|')
MAX_NAME_BYTES = 200  # UTF-8 bytes of a stored name (file systems allow 255)
CHUNK = 1 << 20
SUFFIX = {
    "tiff": ".tiff",
    "dicom": "",
    "png": ".png",
    "jpeg": ".jpg",
    "zip": ".zip",
    "container": ".spz",
}


class UploadRejected(Exception):
    """An upload the service refuses: `status` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _safe_char(c: str) -> str:
    cat = unicodedata.category(c)
    if c in _UNSAFE or cat.startswith("C"):  # control, format, unassigned, private
        return "_" if c in _UNSAFE else ""
    return "_" if cat.startswith("Z") else c  # spaces and other separators


def _truncate(text: str, max_bytes: int) -> str:
    while len(text.encode()) > max_bytes:
        text = text[:-1]
    return text


def sanitize_filename(name: str | None, default: str = "upload") -> str:
    """A safe base name that keeps the user's label: the last path component, NFC, Unicode
    letters and symbols kept (`Präparat.svs`, `切片🔬.svs`), separators and control characters
    dropped or made `_`, no leading dots, at most MAX_NAME_BYTES of UTF-8, and the extension
    always kept (readers pick formats by it). `../../etc/passwd` -> `passwd`; `/abs/x.svs` ->
    `x.svs`; `.svs` -> `upload.svs`."""
    base = unicodedata.normalize("NFC", name or "").replace("\\", "/").split("/")[-1]
    base = "".join(_safe_char(c) for c in base)
    base = re.sub(r"_{2,}", "_", base).strip()
    stem, dot, ext = base.rpartition(".")
    if not dot or not ext or len(ext) > 16 or not stem.strip("._-"):
        if dot and ext and len(ext) <= 16 and ext.strip("._-"):  # `.svs`, `__.svs`: no stem
            return f"{default}.{ext}"
        stem, ext = base, ""
    stem = stem.lstrip("._-")
    if not stem:
        return default
    suffix = f".{ext}" if ext else ""
    return _truncate(stem, MAX_NAME_BYTES - len(suffix.encode())) + suffix


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
    if kind == "container" and suffix == ".spz":
        return filename
    return filename + (SUFFIX.get(kind) or ".dcm")


@dataclass
class Received:
    path: Path  # a file, or a folder of DICOM files
    kind: str  # tiff | dicom | image | container | zip (not yet told apart: DICOM or .spz)
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
        return place(tmp, folder, filename, size, digest.hexdigest(), head)
    except BaseException:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        raise


def place(tmp: Path, folder: Path, filename: str, size: int, sha256: str,
          head: bytes) -> Received:  # fmt: skip
    """Move a complete upload `tmp` to its name in `folder`, typed by its first bytes `head`
    (415 if not a slide; the caller removes the folder then)."""
    kind = sniff(head)
    if kind is None:
        raise UploadRejected(415, _not_a_slide(filename))
    if kind == "zip":  # a container or a DICOM zip: told apart off the event loop (store)
        target = folder / "upload.zip"
        tmp.rename(target)
        return Received(target, "zip", filename, size, sha256)
    target = folder / stored_name(filename, kind)
    tmp.rename(target)
    family = "image" if kind in ("png", "jpeg") else kind
    return Received(target, family, filename, size, sha256)


def hash_file(path: Path) -> tuple[str, bytes]:
    """SHA-256 of a whole file and its first 132 bytes (a resumable upload's parts arrived
    over several requests; the digest is over the file as stored)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(132)
        digest.update(head)
        while chunk := f.read(8 * CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), head


def _not_a_slide(filename: str) -> str:
    return (
        f"{filename}: not a slide (expected a TIFF-based slide such as SVS or pyramidal "
        "TIFF, a zip of a DICOM slide folder, a DICOM file, a PNG/JPEG image, or a "
        "slidepress container .spz)"
    )


def is_container_zip(zip_path: Path, filename: str) -> bool:
    """Whether an uploaded zip is meant as a slidepress container: its name ends in `.spz`
    or its central directory lists the container's manifest (a DICOM folder's zip holds
    `.dcm` files). Only the directory is read; a zip that cannot be read is a container
    when so named (its validation then says why), else left to the DICOM unpacker."""
    from ..store.container import MANIFEST

    if Path(filename).suffix.lower() == ".spz":
        return True
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return MANIFEST in zf.NameToInfo
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return False


def accept_container(zip_path: Path, folder: Path, filename: str) -> Path:
    """Keep an uploaded container as `folder/NAME.spz` (the reader picks it by the suffix)
    once it validates as a container and every entry's CRC matches; else UploadRejected
    (422) with the container's one-line reason (the caller removes the folder)."""
    from ..errors import SlidepressError
    from ..store.container import Container

    target = folder / stored_name(filename, "container")
    zip_path.rename(target)
    try:
        with Container(target) as c:
            bad = c.verify()
    except SlidepressError as e:
        raise UploadRejected(422, f"not a valid slidepress container: {e}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
        raise UploadRejected(
            422, (f"not a valid slidepress container: {target.name}: corrupted ({e})")
        ) from None
    if bad:
        raise UploadRejected(422, (
            f"not a valid slidepress container: {target.name}: entry {bad[0]} fails its CRC "
            "check (the container is damaged or was tampered with)"))  # fmt: skip
    return target


def extract_dicom_zip(
    zip_path: Path,
    target: Path,
    max_bytes: int,
    max_members: int = 20_000,
    max_ratio: float = 100.0,
    cap_reason: str = "",
) -> int:
    """Unpack the DICOM files of a zip into `target` (flat, sanitised names); return the
    count. Folders in the zip are ignored; non-DICOM members are skipped. At most
    `max_bytes` are written (413, `cap_reason` says which limit), counted as written; a
    declared total over it, or a member declaring more than `max_ratio` times its deflated
    size, is refused before unpacking (413); nothing is left behind."""
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
            too_big = f"the zip unpacks to more than {max_bytes} bytes{cap_reason}"
            if sum(i.file_size for i in infos) > max_bytes:
                raise UploadRejected(413, too_big)
            for info in infos:
                if info.file_size > max(info.compress_size, 1) * max_ratio:
                    raise UploadRejected(413, (
                        f"zip member {sanitize_filename(info.filename)} is compressed "
                        f"{info.file_size / max(info.compress_size, 1):.0f}:1 (limit "
                        f"{max_ratio:g}:1); zip a DICOM folder without compression (stored), as "
                        "the client and the page do"))  # fmt: skip
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
                            if written > max_bytes:  # declared sizes may lie
                                raise UploadRejected(413, too_big)
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
