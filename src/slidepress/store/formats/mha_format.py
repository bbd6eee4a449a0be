"""MetaImage .mha (SimpleITK), the format the NIC web app delivered.

The image is the feature grid as a C-component vector image (spacing = cell pitch in mm).
MetaImage holds one image, so the other arrays travel in the header as base64 of compressed
.npy bytes, split into keys of at most 16,000 characters (MetaIO fails on longer lines).
float16 features are stored as float32 (MetaImage has no half floats) and restored on read.

Integrity: the header key `slidepress_digests` (see `integrity`) holds SHA-256 digests of the
arrays as read back. MetaIO reports a damaged or truncated file on stderr from C++ (and may
still return an image, e.g. after "Uncompress failed"); reads capture that output, so a bad
file gives one FormatError line instead of ITK's multi-line noise or garbage pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ...errors import FormatError
from ..grid import ARRAY_FIELDS, EmbeddingGrid
from . import integrity

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
    # MetaImage has no half floats; other dtypes are stored as they are (lossless)
    native = np.float32 if feats.dtype == np.float16 else feats.dtype.newbyteorder("=")
    pixels = feats.astype(native, copy=False)
    image = sitk.GetImageFromArray(pixels, isVector=True)
    pitch_mm = grid.metadata.get("grid", {}).get("cell_pitch_um", 1000.0) / 1000.0
    image.SetSpacing((pitch_mm, pitch_mm))
    image.SetMetaData(_PREFIX + "metadata", json.dumps(grid.metadata))
    image.SetMetaData(_PREFIX + "features_dtype", str(feats.dtype))
    record = integrity.grid_digests({**grid.arrays(), "features": feats}, grid.metadata)
    image.SetMetaData(integrity.DIGESTS_KEY, integrity.dumps(record))
    for name in ARRAY_FIELDS[1:]:
        text = _pack(getattr(grid, name))
        parts = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
        image.SetMetaData(f"{_PREFIX}{name}_parts", str(len(parts)))
        for i, part in enumerate(parts):
            image.SetMetaData(f"{_PREFIX}{name}_{i:05d}", part)
    sitk.WriteImage(image, str(path), useCompression=True)


_CAPTURE_LOCK = threading.Lock()


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what C++ (MetaIO, ITK) writes to file descriptor 2 during the block (std::cerr is
    unbuffered). The text goes into the yielded list (one string); the caller decides whether
    to show it."""
    out: list[str] = []
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    with _CAPTURE_LOCK, tempfile.TemporaryFile() as tmp:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all (a daemon): nothing to keep clean
            yield out
            out.append("")
            return
        try:
            os.dup2(tmp.fileno(), 2)
            try:
                yield out
            finally:
                os.dup2(saved, 2)
                tmp.seek(0)
                out.append(tmp.read().decode("utf-8", "replace"))
        finally:
            os.close(saved)


def _reason(exc: str, printed: str) -> str:
    """One line from ITK's exception text and what MetaIO printed."""
    text = f"{printed}\n{exc}"
    if "not read completely" in text:
        return "truncated: the pixel data is shorter than the header declares"
    if "Uncompress failed" in text:
        return "pixel data damaged (zlib inflate failed)"
    if "Unable to determine ImageIO reader" in text:
        return "not a MetaImage file (empty or unknown header)"
    if "Error parsing file" in text or "Cannot parse file" in text:
        return "header damaged or truncated"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = next((ln for ln in lines if "ERROR" in ln), lines[0] if lines else "unknown error")
    return re.sub(r"\(0x[0-9a-f]+\)", "", line)[:200]


def _read_image(path: Path):
    sitk = _sitk()
    warn = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        with _captured_stderr() as printed:
            try:
                image = sitk.ReadImage(str(path))
                feats = sitk.GetArrayFromImage(image)
            except RuntimeError as e:
                exc = str(e)
            else:
                exc = ""
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(warn)
    chatter = printed[0] if printed else ""
    if exc or "failed" in chatter.lower() or "not read completely" in chatter:
        raise FormatError(f"{path.name}: not a readable mha grid ({_reason(exc, chatter)})")
    if chatter:  # a clean read that printed something: not ours to hide (another thread's?)
        os.write(2, chatter.encode())
    return image, feats


def _header(path: Path, image, key: str) -> str:
    integrity.require(path, image.HasMetaDataKey(key), f"header key {key!r}")
    return image.GetMetaData(key)


def read(path: Path) -> EmbeddingGrid:
    image, feats = _read_image(path)
    if feats.ndim == 2:  # single-component image
        feats = feats[..., None]
    if not image.HasMetaDataKey(_PREFIX + "metadata"):
        raise FormatError(f"{path.name}: .mha without slidepress metadata")
    feats = feats.astype(_header(path, image, _PREFIX + "features_dtype"))
    arrays = {"features": feats}
    for name in ARRAY_FIELDS[1:]:
        try:
            n = int(_header(path, image, f"{_PREFIX}{name}_parts"))
            text = "".join(_header(path, image, f"{_PREFIX}{name}_{i:05d}") for i in range(n))
            arrays[name] = _unpack(text)
        except (ValueError, binascii.Error, zlib.error, EOFError) as e:
            why = " ".join(str(e).split()) or type(e).__name__
            raise FormatError(f"{path.name}: {name} damaged ({why})") from None
    metadata = json.loads(image.GetMetaData(_PREFIX + "metadata"))
    text = (
        image.GetMetaData(integrity.DIGESTS_KEY)
        if image.HasMetaDataKey(integrity.DIGESTS_KEY)
        else None
    )
    integrity.verify(path, arrays, metadata, integrity.parse(path, text))
    return EmbeddingGrid(**arrays, metadata=metadata)
