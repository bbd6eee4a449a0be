"""Per-array SHA-256 digests written with every grid and checked when it is read.

Why: a damaged grid (a lost zarr chunk, a flipped byte, an edited npz member) otherwise decodes
to plausible arrays (zeros, an all-False mask) and a model silently learns from them. Each
format stores the digests *beside* the grid's `metadata` (so `EmbeddingGrid.equals` and
lossless `convert` are untouched), under the key `DIGESTS_KEY`, as JSON
`{"version": 1, "algorithm": "sha256", "arrays": {name: hex}, "metadata": hex}`.

A digest covers what `read` returns: dtype, shape and the C-order little-endian bytes of each
array (features in their stored dtype, so float16 grids verify too), and the metadata as
canonical JSON. Grids written before digests existed carry none; they are read with structural
checks only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import FormatError
from ..grid import ARRAY_FIELDS

DIGESTS_KEY = "slidepress_digests"
VERSION = 1
_ROWS_PER_UPDATE = 64  # hash in row blocks: no full-size byte copy of a large grid


def array_digest(arr: np.ndarray, keep: np.ndarray | None = None) -> str:
    """SHA-256 of dtype, shape and C-order bytes; with `keep` (rows, cols) bool, cells where
    `keep` is False count as zero (what h5, which stores tissue cells only, reads back)."""
    arr = np.asarray(arr)
    # little-endian bytes whatever the stored byte order: formats may swap it on the way back
    little = arr.dtype.newbyteorder("<")
    h = hashlib.sha256(f"{little.str}|{arr.shape}|".encode())
    if arr.ndim == 0:
        h.update(arr.astype(little).tobytes())
        return h.hexdigest()
    for r0 in range(0, arr.shape[0], _ROWS_PER_UPDATE):
        block = np.ascontiguousarray(arr[r0 : r0 + _ROWS_PER_UPDATE], dtype=little)
        if keep is not None:
            drop = ~keep[r0 : r0 + _ROWS_PER_UPDATE]
            if drop.any():
                block = block.copy()
                block[drop] = 0
        h.update(block.reshape(-1).view(np.uint8))
    return h.hexdigest()


def canonical_metadata(metadata: Mapping[str, Any]) -> str:
    """The metadata as JSON with sorted keys: equal for equal dicts, whatever the format."""
    return json.dumps(json.loads(json.dumps(metadata)), sort_keys=True, separators=(",", ":"))


def metadata_digest(metadata: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_metadata(metadata).encode()).hexdigest()


def grid_digests(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any], keep: np.ndarray | None = None
) -> dict[str, Any]:
    """The record a writer stores: digests of `arrays` as they will be read back (`keep`: see
    `array_digest`, applied to features only)."""
    return {
        "version": VERSION,
        "algorithm": "sha256",
        "arrays": {
            name: array_digest(arrays[name], keep if name == "features" else None)
            for name in ARRAY_FIELDS
        },
        "metadata": metadata_digest(metadata),
    }


def dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)


def parse(path: Path, text: str | bytes | None) -> dict[str, Any] | None:
    """The stored record, or None for a grid written before digests (no record at all)."""
    if text is None:
        return None
    try:
        record = json.loads(text)
        ok = (
            isinstance(record, dict)
            and isinstance(record.get("arrays"), dict)
            and isinstance(record.get("version"), int)
        )
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise FormatError(f"{path.name}: integrity record ({DIGESTS_KEY}) is damaged")
    if record["version"] > VERSION or record.get("algorithm", "sha256") != "sha256":
        raise FormatError(
            f"{path.name}: integrity record version {record['version']} was written by a newer "
            "slidepress; upgrade slidepress to read it"
        )
    return record


def verify(
    path: Path,
    arrays: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
    record: Mapping[str, Any] | None,
) -> None:
    """Raise FormatError naming the first array whose bytes differ from what was written."""
    if record is None:
        return
    stored = record["arrays"]
    for name in ARRAY_FIELDS:
        want = stored.get(name)
        if want is None:
            raise FormatError(f"{path.name}: integrity record has no digest for {name}; damaged")
        if array_digest(arrays[name]) != want:
            raise FormatError(
                f"{path.name}: {name} damaged (checksum mismatch); the file was changed or "
                "corrupted after it was written: re-create it from the slide"
            )
    want = record.get("metadata")
    if want is not None and metadata_digest(metadata) != want:
        raise FormatError(
            f"{path.name}: metadata damaged (checksum mismatch); the file was changed or "
            "corrupted after it was written: re-create it from the slide"
        )


def require(path: Path, present: object, name: str) -> None:
    """A field every grid has: its absence is damage, never an empty default."""
    if not present:
        raise FormatError(f"{path.name}: {name} missing; the grid is incomplete or damaged")
