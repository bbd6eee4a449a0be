"""NumPy .npz (compressed): one array per field, metadata as a JSON string."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..grid import ARRAY_FIELDS, EmbeddingGrid
from .registry import register_format


def write(grid: EmbeddingGrid, path: Path, float16: bool = False) -> None:
    arrays = grid.arrays()
    if float16:
        arrays["features"] = arrays["features"].astype(np.float16)
    with open(path, "wb") as f:  # a file object keeps numpy from appending '.npz'
        np.savez_compressed(f, **arrays, metadata=np.array(json.dumps(grid.metadata)))


def read(path: Path) -> EmbeddingGrid:
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in ARRAY_FIELDS}
        metadata = json.loads(str(z["metadata"]))
    return EmbeddingGrid(**arrays, metadata=metadata)


register_format("npz", (".npz",), write, read)
