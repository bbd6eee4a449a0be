"""A TIFF slide in object storage, read by ranges instead of copied whole.

For a TIFF whose pixels the tifffile fast path reads (plain tiled Aperio SVS and generic
TIFF: slide/tifffile_reader.py), staging copies only its structure: a sparse local file of
the object's size holding the header, every IFD and every tag value stored outside one
(`guard.metadata_ranges`: tile offsets, descriptions, JPEG tables). Every step that parses
structure (the guard, OpenSlide's geometry and properties, tifffile's map of the levels)
runs on that file as on a local slide; the tifffile reader then fetches the bytes of the
tiles it decodes from the store, by ranges (`RangeSource`), and keeps them in the sparse
file. So the pixels and every output are those of a local run, and a slide costs its
structure plus the tiles read. (OpenSlide's `openslide.quickhash-1` property, a hash of tile
bytes it reads on open, is dropped: it would hash holes.)

Anything else (another format, a TIFF the fast path declines, a reader named with
`--reader`) is staged whole (`whole`), and `remote.stage` says so.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .. import remote
from ..errors import SlideError, StorageError
from .guard import TIFF_MAGIC, metadata_ranges

HEAD_BYTES = 64 << 10  # always copied: the header, and often the first IFDs
WALK_BLOCK = 16 << 10  # bytes per request while walking the IFDs (an IFD is ~12 B per tag)
TIFF_SUFFIXES = (".svs", ".tif", ".tiff")  # the fast path's formats (READERS "tifffile")


class RangeSource:
    """The bytes of a staged slide's object, fetched by (offset, length) ranges and kept in
    the sparse copy as they arrive: the survey, the tissue mask and the coding read some
    tiles more than once (locally the page cache serves those), each is fetched once per
    process. Shared by every handle on the same copy in the process (worker threads)."""

    def __init__(self, url: str, path: Path):
        self.url, self.path = url, str(path)
        with _LOCK:
            self._have = _PRESENT.setdefault(self.path, set())

    def read(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        import os

        with _LOCK:
            missing = sorted({r for r in ranges if r not in self._have})
        fd = os.open(self.path, os.O_RDWR)
        try:
            if missing:
                try:
                    datas = remote.read_ranges(self.url, missing)
                except StorageError as e:
                    raise SlideError(str(e)) from None
                for (o, n), d in zip(missing, datas, strict=True):
                    if len(d) != n:
                        raise SlideError(f"{remote.name(self.url)}: object shorter than its tiles")
                    os.pwrite(fd, d, o)
                with _LOCK:
                    self._have.update(missing)
            return [os.pread(fd, n, o) for o, n in ranges]
        finally:
            os.close(fd)


_PRESENT: dict[str, set[tuple[int, int]]] = {}  # sparse copy -> ranges fetched into it
_LOCK = threading.Lock()


def source_for(path: str | Path) -> RangeSource | None:
    """Where to fetch pixel bytes for a sparse staged copy; None for a whole local file."""
    if not remote.is_sparse(path):
        return None
    url = remote.origin(path)
    return RangeSource(url, Path(path)) if url else None


def whole(path: Path) -> Path:
    """A whole local copy of a sparse staged slide (another reader than the fast path)."""
    url = remote.origin(path) if remote.is_sparse(path) else None
    return remote.stage(url) if url else path


def stage_slide(url: str) -> Path:
    """A local path for the slide at `url`: a sparse copy read by ranges where the tifffile
    fast path applies, else a whole copy (a DICOM prefix: its files)."""
    rec = remote.info(url)
    if rec.get("type") == "directory":
        return remote.stage_tree(url)
    if not remote.name(url).lower().endswith(TIFF_SUFFIXES):
        return remote.stage(url)
    folder = remote.entry(url, rec)
    target = folder / remote.name(url)
    if target.is_file() and remote.origin(target):  # staged before, sparse or whole
        return target
    sparse = _sparse_copy(url, target, int(rec.get("size") or 0))
    return remote.stage(url) if sparse is None else sparse


def _sparse_copy(url: str, target: Path, size: int) -> Path | None:
    """Write the structure of the TIFF at `url` into a sparse file at `target`; None when
    the fast path would not read it (then it is staged whole)."""
    import os
    import uuid

    from .tifffile_reader import TiffFileReader

    head = remote.read_ranges(url, [(0, min(HEAD_BYTES, size))])[0]
    if head[:4] not in TIFF_MAGIC:
        return None
    with remote.open_read(url, WALK_BLOCK) as f:  # the IFD walk: small reads, read ahead
        ranges = metadata_ranges(remote.name(url), f, size)
        remote.count_fetched(getattr(f.cache, "total_requested_bytes", 0))
    ranges = [(o, n) for o, n in ranges if o + n > HEAD_BYTES]
    remote.evict(size // 100)  # a sparse copy takes little disk (structure only)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as out:
            out.truncate(size)  # holes read as zeros, take no disk
            out.write(head)
            for (o, _), data in zip(ranges, remote.read_ranges(url, ranges), strict=True):
                out.seek(o)
                out.write(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    (folder / remote.SPARSE).write_text("structure only; pixels are read from the store\n")
    remote.write_source(folder, url, remote.info(url))
    try:  # the fast path takes it (OpenSlide geometry, tifffile level map)?
        TiffFileReader(target).close()
    except SlideError:  # NotPreferred, or a file the readers will refuse: staged whole
        (folder / remote.SPARSE).unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        return None
    remote.log.info(
        "reading %s by ranges (its structure is staged in %s; tiles are fetched as read)",
        remote.public(url),
        remote.cache_root(),
    )
    return target
