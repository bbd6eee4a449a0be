"""CLAM/TRIDENT-style HDF5: `features` (N, C) and `coords` (N, 2) of the tissue cells only.

Tools that read CLAM/TRIDENT features see the datasets and attributes they expect. The grid
layout needed for an exact round trip is kept alongside: `grid_index` (N, 2: row, col) and
`grid/coords`, `grid/mask`, `grid/tissue_fraction`, `grid/tissue_mask`.

Integrity: every dataset has HDF5's Fletcher-32 checksum filter (a flipped byte fails at that
chunk), and the file attribute `slidepress_digests` (see `integrity`) holds SHA-256 digests of
the arrays as read back, so a dataset rewritten with other values is caught too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import FormatError
from ..grid import ARRAY_FIELDS, EmbeddingGrid
from . import integrity

_CHECKED = {"compression": "gzip", "fletcher32": True}


def write(grid: EmbeddingGrid, path: Path, float16: bool = False) -> None:
    import h5py

    feats = grid.features.astype(np.float16) if float16 else grid.features
    rows, cols = np.nonzero(grid.mask)
    meta = grid.metadata
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats[rows, cols], **_CHECKED)
        coords = f.create_dataset("coords", data=grid.coords[rows, cols], **_CHECKED)
        index = np.column_stack([rows, cols]).astype(np.int64)
        f.create_dataset("grid_index", data=index, fletcher32=True)
        g = f.create_group("grid")
        g.attrs["shape"] = feats.shape
        g.attrs["features_dtype"] = str(feats.dtype)
        for name in ("coords", "mask", "tissue_fraction", "tissue_mask"):
            g.create_dataset(name, data=getattr(grid, name), **_CHECKED)
        tiling = meta.get("grid", {})
        # attribute names used by CLAM/TRIDENT readers
        coords.attrs["patch_size"] = tiling.get("patch_size", 0)
        coords.attrs["patch_size_level0"] = tiling.get("patch_size_level0", 0)
        coords.attrs["target_mpp"] = tiling.get("mpp_effective", 0.0)
        coords.attrs["name"] = meta.get("slide", {}).get("name", "")
        f.attrs["metadata"] = json.dumps(meta)
        # features only where mask is True: digest what read will rebuild (zeros elsewhere)
        arrays = {**grid.arrays(), "features": feats}
        record = integrity.grid_digests(arrays, json.loads(json.dumps(meta)), keep=grid.mask)
        f.attrs[integrity.DIGESTS_KEY] = integrity.dumps(record)


def _data(path: Path, f, key: str) -> np.ndarray:
    integrity.require(path, key in f, f"dataset {key!r}")
    try:
        return f[key][...]
    except Exception as e:  # Fletcher-32 or inflate failure: OSError from h5py
        why = " ".join(str(e).split()) or type(e).__name__
        if "filter" in why.lower():
            why = f"checksum or compression filter failed: {why}"
        raise FormatError(f"{path.name}: {key} damaged ({why})") from None


def read(path: Path) -> EmbeddingGrid:
    import h5py

    with h5py.File(path, "r") as f:
        integrity.require(path, "metadata" in f.attrs, "file attribute 'metadata'")
        integrity.require(path, "grid" in f, "group 'grid'")
        g = f["grid"]
        for key in ("shape", "features_dtype"):
            integrity.require(path, key in g.attrs, f"grid attribute {key!r}")
        shape = tuple(int(s) for s in g.attrs["shape"])
        feats = np.zeros(shape, dtype=np.dtype(str(g.attrs["features_dtype"])))
        idx = _data(path, f, "grid_index")
        stored = _data(path, f, "features")
        try:
            feats[idx[:, 0], idx[:, 1]] = stored
        except (IndexError, ValueError) as e:
            raise FormatError(
                f"{path.name}: features do not fit the grid ({e}); the file is damaged"
            ) from None
        arrays = {"features": feats}
        for name in ARRAY_FIELDS[1:]:
            arrays[name] = _data(path, f, f"grid/{name}")
        metadata = json.loads(f.attrs["metadata"])
        text = f.attrs.get(integrity.DIGESTS_KEY)
    record = integrity.parse(path, text)
    integrity.verify(path, arrays, metadata, record)
    return EmbeddingGrid(**arrays, metadata=metadata)
