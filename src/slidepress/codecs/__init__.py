"""Tile codecs behind one interface; `get_codec("jpegxl", quality=90)`.

A new codec is one module with a `Codec` subclass plus one `CODECS.add(...)` line here (the
module is imported when the codec is first used, so listing names loads no codec library).
"""

from __future__ import annotations

from typing import Any

from ..errors import CodecError
from ..registry import Registry
from .base import Codec

CODECS: Registry[type[Codec]] = Registry("codec", CodecError, name_attr="name")
_CONV = "slidepress.codecs.conventional"
CODECS.add("jpeg", f"{_CONV}:Jpeg", summary="libjpeg-turbo baseline JPEG, quality 1-100")
CODECS.add("jpegxl", f"{_CONV}:JpegXL", summary="libjxl JPEG-XL, quality 1-100, effort 3")
CODECS.add("webp", f"{_CONV}:WebP", summary="libwebp lossy WebP, quality 0-100")
CODECS.add("avif", f"{_CONV}:Avif", summary="libavif AV1 intra, quality 0-100, speed 8")
CODECS.add("jpeg2000", f"{_CONV}:Jpeg2000", summary="OpenJPEG JPEG 2000, target PSNR 20-60 dB")
CODECS.add("htj2k", f"{_CONV}:HTJ2K", summary="OpenJPH HTJ2K, quantisation step (lower = better)")
CODECS.add("png", f"{_CONV}:Png", summary="lossless reference (zlib level 0-9)")
CODECS.add(
    "learned",
    "slidepress.codecs.learned.codec:LearnedCodec",
    summary="slidepress's H&E-trained neural codec, quality 1-8 (exact integer decoder)",
)
_AE = "slidepress.codecs.autoencoder.codec"
CODECS.add(
    "pathae",
    f"{_AE}:AutoencoderCodec",
    summary="slidepress's H&E autoencoder, K-means/int8 latents, quality = rate level 1-7",
)
CODECS.add("ae-kl", f"{_AE}:KLCodec", summary="a diffusers AutoencoderKL bundle (weights=DIR)")
CODECS.add("ae-dc", f"{_AE}:DCCodec", summary="a diffusers AutoencoderDC bundle (weights=DIR)")

register_codec = CODECS.register  # decorator for codecs defined outside this package


def get_codec(name: str, quality: float | None = None, **params: Any) -> Codec:
    return CODECS.get(name)(quality, **params)


__all__ = ["CODECS", "Codec", "get_codec", "register_codec"]
