"""Grid file formats, chosen by suffix.

A new format is one module with `write(grid, path, float16=False)` and `read(path)`, plus one
`FORMATS.add(...)` line below (modules are imported on first use: h5py, zarr and SimpleITK
load only for the format in hand).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ...errors import FormatError
from ...registry import Registry
from ..atomic import atomic_path
from ..grid import EmbeddingGrid

FORMATS: Registry[ModuleType] = Registry("grid format", FormatError)
FORMATS.add(
    "zarr",
    "slidepress.store.formats.zarr_format",
    suffixes=(".zarr",),
    summary="Zarr v3 folder, Blosc-zstd, CRC-32C chunks (default)",
)
FORMATS.add(
    "npz",
    "slidepress.store.formats.npz_format",
    suffixes=(".npz",),
    summary="NumPy .npz, one member per array",
)
FORMATS.add(
    "mha",
    "slidepress.store.formats.mha_format",
    suffixes=(".mha",),
    summary="MetaImage vector image (SimpleITK), as the NIC web app delivered",
)
FORMATS.add(
    "h5",
    "slidepress.store.formats.h5_format",
    suffixes=(".h5", ".hdf5"),
    summary="CLAM/TRIDENT-style HDF5 (features + coords of tissue cells)",
)

__all__ = ["FORMATS", "format_for", "grid_suffixes", "read_grid", "write_grid"]


def grid_suffixes() -> list[str]:
    """Every suffix a grid file may have (for finding grids in a folder)."""
    return FORMATS.suffixes()


def format_for(path: str | Path) -> str:
    """The format name of a grid path, from its suffix (FormatError if none matches)."""
    suffix = Path(path).suffix.lower()
    name = FORMATS.for_suffix(suffix)
    if name is None:
        known = ", ".join(grid_suffixes())
        raise FormatError(f"{Path(path).name}: unknown grid format {suffix!r} (use one of {known})")
    return name


def write_grid(grid: EmbeddingGrid, path: str | Path, **options: object) -> Path:
    """Write atomically: readers never see a partial file under `path`."""
    path = Path(path)
    fmt = FORMATS.get(format_for(path))
    with atomic_path(path) as tmp:
        fmt.write(grid, tmp, **options)
    return path


def read_grid(path: str | Path) -> EmbeddingGrid:
    """Read and verify: a grid whose arrays differ from what was written (stored digests, chunk
    checksums, missing chunks or members) raises FormatError rather than returning zeros."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such grid file")
    name = format_for(path)
    try:
        return FORMATS.get(name).read(path)
    except FormatError:
        raise
    except Exception as e:  # library errors can span lines (ITK, HDF5): keep the CLI's one line
        why = " ".join(str(e).split()) or type(e).__name__
        why = why if len(why) <= 300 else why[:297] + "..."
        raise FormatError(f"{path.name}: not a readable {name} grid ({why})") from None
