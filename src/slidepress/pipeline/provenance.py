"""What every output says about where it came from: the slide, its hash, who made it, when."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__, remote
from ..slide import SlideReader, guard
from ..slide.discovery import slide_files


def content_sha256(path: Path) -> str:
    """Hash of the slide's bytes (every file of its series, by name, for a DICOM folder);
    of the object in the store for a slide read from there by ranges (remote.sha256_of)."""
    if remote.is_sparse(path):
        return remote.sha256_of(remote.origin(path) or "")
    h = hashlib.sha256()
    for f in slide_files(path):
        if path.is_dir():
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(8 << 20):
                h.update(block)
    return h.hexdigest()


def source_bytes(path: Path) -> int:
    """The slide's bytes as stored (what a container's size is compared with); the index
    file alone where its pixels live in files we cannot enumerate."""
    n = guard.source_bytes(path)
    return n if n is not None else path.stat().st_size


def stamp() -> dict[str, Any]:
    return {
        "slidepress_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def slide_record(path: Path, reader: SlideReader, sha: str) -> dict[str, Any]:
    """Where a grid or container came from: the file, its hash, the reader and the resolution
    used (settled by `open_slide`: from the file, an override or a table). A slide staged
    from object storage is recorded by its URL."""
    info = reader.info
    return {
        "name": path.name,
        "path": remote.origin(path) or str(path.resolve()),
        "sha256": sha,
        "bytes": source_bytes(path),
        "reader": info.reader,
        "vendor": info.vendor,
        "dimensions": list(info.dimensions),
        "mpp_file": list(info.mpp) if info.mpp else None,
        "mpp_used": reader.require_mpp(),
        "mpp_source": reader.mpp_source,
    }
