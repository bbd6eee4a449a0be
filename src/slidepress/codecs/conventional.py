"""Conventional image codecs through imagecodecs (libjpeg-turbo, libjxl, libwebp, libavif,
OpenJPEG, OpenJPH, libpng). Quality knobs are the libraries' own, documented per class.
Registered (lazily, by name) in codecs/__init__.py."""

from __future__ import annotations

import imagecodecs
import numpy as np

from ..errors import CodecError
from .base import Codec, check_tile


class _ImagecodecsCodec(Codec):
    _lib_key = ""  # key in imagecodecs.version(dict)
    _decoded_dtype: type = np.uint8  # what the library decodes our tiles to

    def library_version(self) -> str:
        versions = imagecodecs.version(dict)
        return f"imagecodecs {versions['imagecodecs']}, {self._lib_key} {versions[self._lib_key]}"

    def decode(self, data: bytes, shape: tuple[int, int, int] | None = None) -> np.ndarray:
        # imagecodecs checks `out` against the header before decoding anything
        out = None if shape is None else np.empty(shape, self._decoded_dtype)
        try:
            tile = self._decode(data, out)
        except Exception as e:  # every imagecodecs error type
            if out is not None and "out.shape" in str(e):
                raise CodecError(
                    f"{self.name}: tile is not {' x '.join(map(str, shape))} ({e})"
                ) from None
            raise CodecError(f"{self.name}: cannot decode tile ({e})") from None
        if tile.ndim == 2:
            tile = np.repeat(tile[..., None], 3, axis=2)
        return tile[..., :3]

    def _decode(self, data: bytes, out: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError


class Jpeg(_ImagecodecsCodec):
    """libjpeg-turbo baseline JPEG; quality 1-100 (scanners ship q80-90), 4:2:0 chroma."""

    suffix, quality_range, default_quality, _lib_key = ".jpg", (1, 100), 90, "libjpeg_turbo"
    sweeps = {"bench": (30, 50, 70, 80, 90, 95), "downstream": (10, 30, 50, 75, 90)}

    def encode(self, tile: np.ndarray) -> bytes:
        return imagecodecs.jpeg8_encode(check_tile(tile), level=int(self.quality), **self.params)

    def _decode(self, data: bytes, out: np.ndarray | None) -> np.ndarray:
        return imagecodecs.jpeg8_decode(data, out=out)


class JpegXL(_ImagecodecsCodec):
    """libjxl; quality 1-100 (mapped by libjxl to a Butteraugli distance), effort 3 (fast)."""

    suffix, quality_range, default_quality, _lib_key = ".jxl", (1, 100), 90, "libjxl"
    sweeps = {"bench": (30, 50, 70, 80, 90, 95), "downstream": (20, 40, 60, 80, 95)}

    def __init__(self, quality: float | None = None, **params):
        params.setdefault("effort", 3)
        super().__init__(quality, **params)

    def encode(self, tile: np.ndarray) -> bytes:
        return imagecodecs.jpegxl_encode(check_tile(tile), level=self.quality, **self.params)

    def _decode(self, data: bytes, out: np.ndarray | None) -> np.ndarray:
        return imagecodecs.jpegxl_decode(data, out=out)


class WebP(_ImagecodecsCodec):
    """libwebp lossy; quality 0-100. `lossless=False` is explicit: imagecodecs' default is
    lossless, which would silently turn every quality into PNG-like sizes."""

    suffix, quality_range, default_quality, _lib_key = ".webp", (0, 100), 90, "libwebp"
    sweeps = {"bench": (30, 50, 70, 80, 90, 95), "downstream": (20, 40, 60, 80, 95)}

    def encode(self, tile: np.ndarray) -> bytes:
        return imagecodecs.webp_encode(
            check_tile(tile), level=self.quality, lossless=False, **self.params
        )

    def _decode(self, data: bytes, out: np.ndarray | None) -> np.ndarray:
        return imagecodecs.webp_decode(data, out=out)


class Avif(_ImagecodecsCodec):
    """libavif (AV1 intra); quality 0-100, speed 8 (fast; 0 is slowest/best)."""

    suffix, quality_range, default_quality, _lib_key = ".avif", (0, 100), 75, "libavif"
    sweeps = {"bench": (30, 45, 60, 70, 80, 90), "downstream": (20, 40, 60, 80)}

    def __init__(self, quality: float | None = None, **params):
        params.setdefault("speed", 8)
        super().__init__(quality, **params)

    def encode(self, tile: np.ndarray) -> bytes:
        return imagecodecs.avif_encode(check_tile(tile), level=int(self.quality), **self.params)

    def _decode(self, data: bytes, out: np.ndarray | None) -> np.ndarray:
        return imagecodecs.avif_decode(data, out=out)


class Jpeg2000(_ImagecodecsCodec):
    """OpenJPEG JPEG 2000 (irreversible 9/7); quality = target PSNR in dB, 20-60
    (measured: 30 -> 29.4 dB, 40 -> 39.5 dB on H&E)."""

    suffix, quality_range, default_quality, _lib_key = ".jp2", (20, 60), 40, "openjpeg"
    sweeps = {"bench": (26, 28, 31, 34, 37, 40, 45), "downstream": (30, 35, 40, 45)}  # dB

    def encode(self, tile: np.ndarray) -> bytes:
        return imagecodecs.jpeg2k_encode(check_tile(tile), level=self.quality, **self.params)

    def _decode(self, data: bytes, out: np.ndarray | None) -> np.ndarray:
        return imagecodecs.jpeg2k_decode(data, out=out)


class HTJ2K(_ImagecodecsCodec):
    """OpenJPH high-throughput JPEG 2000; quality = quantisation step 0.001-1,
    SMALLER is better (0.01 -> ~41 dB, 0.1 -> ~30 dB on H&E).

    Coded from int16 and clipped on decode: imagecodecs casts the decoder's int32 samples
    straight to uint8, so an overshoot near white (256) would wrap to 0. The step is divided
    by 256 because OpenJPH scales it with the sample range (same bytes, +~70 B header)."""

    suffix, quality_range, default_quality, _lib_key = ".j2c", (0.001, 1.0), 0.01, "openjph"
    higher_is_better = False
    # 0.15 -> ~25 dB, 0.01 -> ~43 dB once decoding clips
    sweeps = {"bench": (0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01)}
    _decoded_dtype = np.int16

    def encode(self, tile: np.ndarray) -> bytes:
        data = check_tile(tile).astype(np.int16)
        return imagecodecs.htj2k_encode(data, level=self.quality / 256, **self.params)

    def _decode(self, data: bytes, out: np.ndarray | None) -> np.ndarray:
        return np.clip(imagecodecs.htj2k_decode(data, out=out), 0, 255).astype(np.uint8)


class Png(_ImagecodecsCodec):
    """Lossless reference; quality = zlib level 0-9 (speed only, pixels are exact)."""

    suffix, quality_range, default_quality, _lib_key = ".png", (0, 9), 6, "libpng"
    lossless = True

    def encode(self, tile: np.ndarray) -> bytes:
        return imagecodecs.png_encode(check_tile(tile), level=int(self.quality), **self.params)

    def _decode(self, data: bytes, out: np.ndarray | None) -> np.ndarray:
        return imagecodecs.png_decode(data, out=out)
