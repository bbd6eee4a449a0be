"""Grid file formats, chosen by suffix. A new format is one module with read/write + register."""

from __future__ import annotations

from pathlib import Path

from ...errors import FormatError
from ..atomic import atomic_path
from ..grid import EmbeddingGrid
from . import h5_format, mha_format, npz_format, zarr_format  # noqa: F401 (register)
from .registry import FORMATS, GridFormat

__all__ = ["FORMATS", "GridFormat", "format_for", "read_grid", "write_grid"]


def format_for(path: str | Path) -> GridFormat:
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
    raise FormatError(f"{Path(path).name}: unknown grid format {suffix!r} (use one of {known})")


def write_grid(grid: EmbeddingGrid, path: str | Path, **options: object) -> Path:
    """Write atomically: readers never see a partial file under `path`."""
    path = Path(path)
    fmt = format_for(path)
    with atomic_path(path) as tmp:
        fmt.write(grid, tmp, **options)
    return path


def read_grid(path: str | Path) -> EmbeddingGrid:
    """Read and verify: a grid whose arrays differ from what was written (stored digests, chunk
    checksums, missing chunks or members) raises FormatError rather than returning zeros."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such grid file")
    fmt = format_for(path)
    try:
        return fmt.read(path)
    except FormatError:
        raise
    except Exception as e:  # library errors can span lines (ITK, HDF5): keep the CLI's one line
        why = " ".join(str(e).split()) or type(e).__name__
        why = why if len(why) <= 300 else why[:297] + "..."
        raise FormatError(f"{path.name}: not a readable {fmt.name} grid ({why})") from None
