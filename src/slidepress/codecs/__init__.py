"""Tile codecs behind one interface; `get_codec("jpegxl", quality=90)`."""

from . import conventional  # noqa: F401 (register)
from .base import Codec
from .registry import CODECS, get_codec, register_codec

__all__ = ["CODECS", "Codec", "get_codec", "register_codec"]
