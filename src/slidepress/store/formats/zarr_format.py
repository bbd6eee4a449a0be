"""Zarr v3 (default): chunked, Blosc-zstd compressed; metadata in the group attributes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..grid import ARRAY_FIELDS, EmbeddingGrid
from .registry import register_format


def write(grid: EmbeddingGrid, path: Path, float16: bool = False) -> None:
    import zarr
    from zarr.codecs import BloscCodec, BloscShuffle

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    codec = BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle)
    for name, arr in grid.arrays().items():
        if name == "features" and float16:
            arr = arr.astype(np.float16)
        chunks = tuple(min(s, 256) for s in arr.shape[:2]) + tuple(arr.shape[2:])
        chunks = tuple(max(1, c) for c in chunks)
        group.create_array(name, data=arr, chunks=chunks, compressors=codec)
    # round-trip through JSON so what is read back equals what was written
    group.attrs.update({"slidepress": json.loads(json.dumps(grid.metadata))})


def read(path: Path) -> EmbeddingGrid:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    arrays = {name: np.asarray(group[name][...]) for name in ARRAY_FIELDS}
    return EmbeddingGrid(**arrays, metadata=dict(group.attrs["slidepress"]))


register_format("zarr", (".zarr",), write, read)
