"""The only place that wires readers, tiling, encoders/codecs and writers together.

The CLI (and later the service) call these functions, not the parts.
"""

from .compress import CompressOptions, CompressResult, compress_slide
from .decompress import decompress_container
from .encode import EncodeOptions, EncodeResult, encode_slide

__all__ = [
    "CompressOptions",
    "CompressResult",
    "EncodeOptions",
    "EncodeResult",
    "compress_slide",
    "decompress_container",
    "encode_slide",
]
