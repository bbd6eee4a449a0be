"""NumPy .npz (compressed): one array per field, metadata as a JSON string.

Integrity: the zip's CRC-32 covers each member's bytes as stored; the `slidepress_digests`
member (see `integrity`) covers the arrays themselves, so a member rewritten with other values
(a valid zip, a wrong grid) is caught too. A missing member is damage, never a default.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ...errors import FormatError
from ..grid import ARRAY_FIELDS, EmbeddingGrid
from . import integrity


def write(grid: EmbeddingGrid, path: Path, float16: bool = False) -> None:
    arrays = grid.arrays()
    if float16:
        arrays["features"] = arrays["features"].astype(np.float16)
    record = integrity.grid_digests(arrays, grid.metadata)
    with open(path, "wb") as f:  # a file object keeps numpy from appending '.npz'
        np.savez_compressed(
            f,
            **arrays,
            metadata=np.array(json.dumps(grid.metadata)),
            **{integrity.DIGESTS_KEY: np.array(integrity.dumps(record))},
        )


def _member(path: Path, z: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    try:
        return z[name]
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as e:
        # zipfile checks each member's CRC-32 as it inflates it
        why = " ".join(str(e).split()) or type(e).__name__
        raise FormatError(f"{path.name}: {name} damaged ({why})") from None


def read(path: Path) -> EmbeddingGrid:
    with np.load(path, allow_pickle=False) as z:
        members = set(z.files)
        for name in (*ARRAY_FIELDS, "metadata"):
            integrity.require(path, name in members, f"member {name!r}")
        arrays = {name: _member(path, z, name) for name in ARRAY_FIELDS}
        metadata = json.loads(str(_member(path, z, "metadata")))
        has_record = integrity.DIGESTS_KEY in members
        stored = _member(path, z, integrity.DIGESTS_KEY) if has_record else None
    record = integrity.parse(path, None if stored is None else str(stored))
    integrity.verify(path, arrays, metadata, record)
    return EmbeddingGrid(**arrays, metadata=metadata)
