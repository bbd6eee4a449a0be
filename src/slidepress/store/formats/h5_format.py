"""CLAM/TRIDENT-style HDF5: `features` (N, C) and `coords` (N, 2) of the tissue cells only.

Tools that read CLAM/TRIDENT features see the datasets and attributes they expect. The grid
layout needed for an exact round trip is kept alongside: `grid_index` (N, 2: row, col) and
`grid/coords`, `grid/mask`, `grid/tissue_fraction`, `grid/tissue_mask`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..grid import EmbeddingGrid
from .registry import register_format


def write(grid: EmbeddingGrid, path: Path, float16: bool = False) -> None:
    import h5py

    feats = grid.features.astype(np.float16) if float16 else grid.features
    rows, cols = np.nonzero(grid.mask)
    meta = grid.metadata
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats[rows, cols], compression="gzip")
        coords = f.create_dataset("coords", data=grid.coords[rows, cols], compression="gzip")
        f.create_dataset("grid_index", data=np.column_stack([rows, cols]).astype(np.int64))
        g = f.create_group("grid")
        g.attrs["shape"] = feats.shape
        g.attrs["features_dtype"] = str(feats.dtype)
        for name in ("coords", "mask", "tissue_fraction", "tissue_mask"):
            g.create_dataset(name, data=getattr(grid, name), compression="gzip")
        tiling = meta.get("grid", {})
        # attribute names used by CLAM/TRIDENT readers
        coords.attrs["patch_size"] = tiling.get("patch_size", 0)
        coords.attrs["patch_size_level0"] = tiling.get("patch_size_level0", 0)
        coords.attrs["target_mpp"] = tiling.get("mpp_effective", 0.0)
        coords.attrs["name"] = meta.get("slide", {}).get("name", "")
        f.attrs["metadata"] = json.dumps(meta)


def read(path: Path) -> EmbeddingGrid:
    import h5py

    with h5py.File(path, "r") as f:
        g = f["grid"]
        shape = tuple(int(s) for s in g.attrs["shape"])
        feats = np.zeros(shape, dtype=np.dtype(str(g.attrs["features_dtype"])))
        idx = f["grid_index"][...]
        feats[idx[:, 0], idx[:, 1]] = f["features"][...]
        return EmbeddingGrid(
            features=feats,
            mask=g["mask"][...],
            coords=g["coords"][...],
            tissue_fraction=g["tissue_fraction"][...],
            tissue_mask=g["tissue_mask"][...],
            metadata=json.loads(f.attrs["metadata"]),
        )


register_format("h5", (".h5", ".hdf5"), write, read)
