"""Zarr v3 (default): chunked, Blosc-zstd compressed; metadata in the group attributes.

Integrity: every chunk carries a CRC-32C (zarr's `crc32c` codec) so a flipped byte fails at
that chunk; every chunk is written, even an all-zero one, so a chunk missing from the store is
damage rather than a fill value; and the group attributes hold per-array SHA-256 digests
(see `integrity`), checked after reading.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from ...errors import FormatError
from ..grid import ARRAY_FIELDS, EmbeddingGrid
from . import integrity

_META_KEY = "slidepress"


def write(grid: EmbeddingGrid, path: Path, float16: bool = False) -> None:
    import zarr
    from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    codecs = [BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle), Crc32cCodec()]
    arrays = grid.arrays()
    if float16:
        arrays["features"] = arrays["features"].astype(np.float16)
    for name, arr in arrays.items():
        chunks = tuple(min(s, 256) for s in arr.shape[:2]) + tuple(arr.shape[2:])
        chunks = tuple(max(1, c) for c in chunks)
        group.create_array(
            name,
            data=arr,
            chunks=chunks,
            compressors=codecs,
            config={"write_empty_chunks": True},  # absent chunk = damage, not zeros
        )
    # round-trip through JSON so what is read back equals what was written
    metadata = json.loads(json.dumps(grid.metadata))
    record = integrity.grid_digests(arrays, metadata)
    group.attrs.update({_META_KEY: metadata, integrity.DIGESTS_KEY: record})


def _missing_chunks(path: Path, name: str, arr) -> list[str]:
    """Chunk keys the array's shape calls for that the (local folder) store lacks."""
    folder = path / name
    keys = (
        arr.metadata.encode_chunk_key(idx)
        for idx in itertools.product(*(range(n) for n in arr.cdata_shape))
    )
    return [k for k in keys if not (folder / k).is_file()]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def read(path: Path) -> EmbeddingGrid:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    integrity.require(path, _META_KEY in attrs, "metadata (group attribute 'slidepress')")
    record = attrs.get(integrity.DIGESTS_KEY)
    record = integrity.parse(path, None if record is None else json.dumps(record))
    members = set(group.array_keys())
    arrays = {}
    for name in ARRAY_FIELDS:
        integrity.require(path, name in members, f"array {name!r}")
        arr = group[name]
        # grids with digests were written with every chunk; older ones skipped empty chunks
        if record is not None and path.is_dir():
            missing = _missing_chunks(path, name, arr)
            if missing:
                more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
                raise FormatError(
                    f"{path.name}: {name} damaged (chunk {missing[0]} missing{more}); "
                    "re-create the grid from the slide"
                )
        try:
            arrays[name] = np.asarray(arr[...])
        except Exception as e:  # zarr's async codec pipeline: ValueError, RuntimeError, ...
            why = "chunk checksum mismatch" if "checksum" in str(e).lower() else _one_line(e)
            raise FormatError(
                f"{path.name}: {name} damaged ({why}); re-create the grid from the slide"
            ) from None
    metadata = attrs[_META_KEY]
    if not isinstance(metadata, dict):
        raise FormatError(f"{path.name}: metadata damaged (not a JSON object)")
    integrity.verify(path, arrays, metadata, record)
    return EmbeddingGrid(**arrays, metadata=dict(metadata))
