"""The only place that wires readers, tiling, encoders/codecs and writers together.

The CLI (and later the service) call these functions, not the parts. Names are loaded on first
use (PEP 562), so `compress` does not import what `encode` needs (scipy, zarr, torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "CompressOptions": "compress",
    "CompressResult": "compress",
    "compress_slide": "compress",
    "decompress_container": "decompress",
    "EncodeOptions": "encode",
    "EncodeResult": "encode",
    "encode_slide": "encode",
}

__all__ = [
    "CompressOptions",
    "CompressResult",
    "EncodeOptions",
    "EncodeResult",
    "compress_slide",
    "decompress_container",
    "encode_slide",
]

if TYPE_CHECKING:
    from .compress import CompressOptions, CompressResult, compress_slide
    from .decompress import decompress_container
    from .encode import EncodeOptions, EncodeResult, encode_slide


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
