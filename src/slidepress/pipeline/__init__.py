"""The only place that wires readers, tiling, encoders/codecs and writers together.

The CLI (and later the service) call these functions, not the parts.
"""

from .encode import EncodeOptions, EncodeResult, encode_slide

__all__ = ["EncodeOptions", "EncodeResult", "encode_slide"]
