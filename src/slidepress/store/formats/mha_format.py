"""MetaImage .mha (SimpleITK), the format the NIC web app delivered.

The image is the feature grid as a C-component vector image (spacing = cell pitch in mm).
MetaImage holds one image, so the other arrays travel in the header as base64 of compressed
.npy bytes, split into keys of at most 16,000 characters (MetaIO fails on longer lines).
float16 features are stored as float32 (MetaImage has no half floats) and restored on read.
"""

from __future__ import annotations

import base64
import io
import json
import zlib
from pathlib import Path

import numpy as np

from ...errors import FormatError
from ..grid import ARRAY_FIELDS, EmbeddingGrid
from .registry import register_format

_CHUNK = 16000
_PREFIX = "slidepress_"


def _sitk():
    try:
        import SimpleITK
    except ImportError:
        raise FormatError(
            "the .mha format needs SimpleITK: pip install 'slidepress[mha]'"
        ) from None
    return SimpleITK


def _pack(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(zlib.compress(buf.getvalue(), 6)).decode("ascii")


def _unpack(text: str) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(base64.b64decode(text))), allow_pickle=False)


def write(grid: EmbeddingGrid, path: Path, float16: bool = False) -> None:
    sitk = _sitk()
    feats = grid.features.astype(np.float16) if float16 else grid.features
    image = sitk.GetImageFromArray(feats.astype(np.float32), isVector=True)
    pitch_mm = grid.metadata.get("grid", {}).get("cell_pitch_um", 1000.0) / 1000.0
    image.SetSpacing((pitch_mm, pitch_mm))
    image.SetMetaData(_PREFIX + "metadata", json.dumps(grid.metadata))
    image.SetMetaData(_PREFIX + "features_dtype", str(feats.dtype))
    for name in ARRAY_FIELDS[1:]:
        text = _pack(getattr(grid, name))
        parts = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
        image.SetMetaData(f"{_PREFIX}{name}_parts", str(len(parts)))
        for i, part in enumerate(parts):
            image.SetMetaData(f"{_PREFIX}{name}_{i:05d}", part)
    sitk.WriteImage(image, str(path), useCompression=True)


def read(path: Path) -> EmbeddingGrid:
    sitk = _sitk()
    image = sitk.ReadImage(str(path))
    feats = sitk.GetArrayFromImage(image)
    if feats.ndim == 2:  # single-component image
        feats = feats[..., None]
    keys = set(image.GetMetaDataKeys())
    if _PREFIX + "metadata" not in keys:
        raise FormatError(f"{path.name}: .mha without slidepress metadata")
    feats = feats.astype(image.GetMetaData(_PREFIX + "features_dtype"))
    arrays = {"features": feats}
    for name in ARRAY_FIELDS[1:]:
        n = int(image.GetMetaData(f"{_PREFIX}{name}_parts"))
        text = "".join(image.GetMetaData(f"{_PREFIX}{name}_{i:05d}") for i in range(n))
        arrays[name] = _unpack(text)
    return EmbeddingGrid(**arrays, metadata=json.loads(image.GetMetaData(_PREFIX + "metadata")))


register_format("mha", (".mha",), write, read)
