"""Autoencoder codecs behind the Codec interface: `pathae` (our own H&E autoencoder, shipped),
`ae-kl` and `ae-dc` (diffusers AutoencoderKL / AutoencoderDC bundles, `weights=FOLDER`).

Quality is the bundle's rate level (quality.Quantizers.levels): 1..K for the K-means
codebooks, smallest first, then int8, then float16 latents (the shipped bundle: 1-5 = K-means
16, 64, 256, 1024, 4096; 6 = int8; 7 = float16). Tiles are coded in batches; a tile is padded
(edge-replicated) to a multiple of the AE's stride and cropped back after decoding, so any
size works (container edge tiles).

Bitstream of one tile (little-endian, self-describing):
    b"PA" | version u8 | mode u8 (0 float16, 1 int8, 2 kmeans) | quality u8 | height u16 |
    width u16 | payload (float16 latents, or constriction ANS words)
`describe()` carries the bundle's name, version and weights hash; containers record them and
refuse to decode with other weights.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ... import zoo
from ...errors import CodecError, UsageError
from ..base import Codec, check_tile

MAGIC, VERSION = b"PA", 1
HEADER = struct.Struct("<2sBBBHH")
MODES = {"float16": 0, "int8": 1, "kmeans": 2}
WEIGHTS = zoo.shipped_path("pathae-he-f8c8")
DECODE_CHUNK = 16  # tiles per decoder forward (memory stays small on big batches)


def _mode_of(level: str) -> int:
    return MODES["kmeans"] if level.startswith("kmeans") else MODES[level]


def _pad(tile: np.ndarray, s: int) -> np.ndarray:
    h, w = tile.shape[:2]
    ph, pw = -h % s, -w % s
    return np.pad(tile, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else tile


def code_tiles(bundle: Any, tiles: list[np.ndarray], quality: int) -> list[bytes]:
    """Tiles -> self-describing bytes at rate level `quality` (see the module docstring)."""
    import torch

    levels = bundle.quantizers.levels
    if not 1 <= quality <= len(levels):
        raise CodecError(f"quality {quality} outside this bundle's levels 1-{len(levels)}")
    level = levels[quality - 1]
    mode = _mode_of(level)
    ae, s = bundle.ae, bundle.ae.stride
    out: list[bytes | None] = [None] * len(tiles)
    groups: dict[tuple[int, ...], list[int]] = {}
    padded = [_pad(check_tile(t), s) for t in tiles]
    for i, p in enumerate(padded):
        groups.setdefault(p.shape, []).append(i)
    for idx in groups.values():
        x = torch.from_numpy(np.stack([padded[i] for i in idx])).permute(0, 3, 1, 2)
        with bundle.lock, torch.inference_mode():
            z = ae.encode(x.float().div(255.0)).float().numpy()
        for j, i in enumerate(idx):
            h, w = tiles[i].shape[:2]
            head = HEADER.pack(MAGIC, VERSION, mode, quality, h, w)
            out[i] = head + _payload(bundle, level, z[j])
    return out  # type: ignore[return-value]


def _payload(bundle: Any, level: str, z: np.ndarray) -> bytes:
    q = bundle.quantizers
    if level == "float16":
        return z.astype("<f2").tobytes()
    if level == "int8":
        return q.int8.encode(q.int8.quantize(z))
    km = q.kmeans[q.levels.index(level)]
    return km.encode(km.quantize(z))


def parse_header(data: bytes) -> tuple[int, int, int, int]:
    """(mode, quality, height, width) of one tile's bytes; CodecError if not ours."""
    if len(data) < HEADER.size:
        raise CodecError("autoencoder tile: too short")
    magic, version, mode, quality, h, w = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or mode not in MODES.values():
        raise CodecError("autoencoder tile: not a slidepress autoencoder stream (bad header)")
    if h < 1 or w < 1:
        raise CodecError(f"autoencoder tile: declares {h} x {w} pixels")
    return mode, quality, h, w


def latents_from_bytes(bundle: Any, data: bytes) -> tuple[np.ndarray, int, int]:
    """One tile's bytes -> (dequantized latents (C, h', w') float32, height, width)."""
    mode, quality, h, w = parse_header(data)
    q, s, c = bundle.quantizers, bundle.ae.stride, bundle.ae.channels
    levels = q.levels
    if not 1 <= quality <= len(levels) or _mode_of(levels[quality - 1]) != mode:
        raise CodecError(f"autoencoder tile: rate level {quality} (mode {mode}) is not one of "
                         f"this bundle's ({', '.join(levels)})")  # fmt: skip
    lh, lw = -(-h // s), -(-w // s)
    payload = data[HEADER.size :]
    level = levels[quality - 1]
    if level == "float16":
        if len(payload) != 2 * c * lh * lw:
            raise CodecError("autoencoder tile: float16 payload has the wrong size")
        return np.frombuffer(payload, "<f2").astype(np.float32).reshape(c, lh, lw), h, w
    if level == "int8":
        return q.int8.dequantize(q.int8.decode(payload, lh, lw)), h, w
    km = q.kmeans[levels.index(level)]
    return km.dequantize(km.decode(payload, c // km.dim, lh, lw)), h, w


def decode_latents(bundle: Any, z: np.ndarray) -> np.ndarray:
    """(N, C, h, w) latents -> (N, h*s, w*s, 3) uint8 pixels, in chunks."""
    import torch

    out = []
    for i in range(0, len(z), DECODE_CHUNK):
        with bundle.lock, torch.inference_mode():
            y = bundle.ae.decode(torch.from_numpy(np.ascontiguousarray(z[i : i + DECODE_CHUNK])))
        y = (y.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out.append(y)
    return np.concatenate(out)


def decode_tiles(bundle: Any, blobs: list[bytes]) -> list[np.ndarray]:
    """Bytes -> tiles, one decoder forward per group of equal latent shape."""
    parsed = [latents_from_bytes(bundle, b) for b in blobs]
    out: list[np.ndarray | None] = [None] * len(blobs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (z, _, _) in enumerate(parsed):
        groups.setdefault(z.shape, []).append(i)
    for idx in groups.values():
        pix = decode_latents(bundle, np.stack([parsed[i][0] for i in idx]))
        for j, i in enumerate(idx):
            _, h, w = parsed[i]
            out[i] = np.ascontiguousarray(pix[j, :h, :w])
    return out  # type: ignore[return-value]


class AutoencoderCodec(Codec):
    """slidepress's own H&E autoencoder, K-means / int8 quantized latents, ANS coded."""

    name = "pathae"
    suffix = ".pae"
    quality_range = (1, 7)
    default_quality = 4
    sweeps = {"downstream": (1, 2, 3, 4, 5, 6)}
    library = "slidepress"
    batched = True
    kind: str | None = "pathae"  # the bundle kind this name accepts (class name for diffusers)
    env_var: str | None = None

    def __init__(self, quality: float | None = None, weights: str | None = None, **params: Any):
        weights = weights or (os.environ.get(self.env_var) if self.env_var else None)
        if weights is not None:  # recorded in containers: absolute, to reopen from anywhere
            weights = str(Path(weights).resolve())
            params["weights"] = weights
        super().__init__(quality, **params)
        if weights is None and self.kind != "pathae":
            raise CodecError(f"{self.name}: give the autoencoder bundle as weights=FOLDER (or "
                             f"${self.env_var}); make one with slidepress.codecs.autoencoder."
                             "loading.bundle_from_diffusers")  # fmt: skip
        try:
            import torch  # noqa: F401 - the autoencoder is a torch network, both ways
        except ImportError:
            raise UsageError(f"codec {self.name} needs torch (its decoder is a torch network): "
                             "pip install 'slidepress[torch]'") from None  # fmt: skip
        from .loading import load_bundle

        self.bundle = load_bundle(weights or WEIGHTS)
        have = self.bundle.ae.kind
        if self.kind != have:
            raise CodecError(f"{self.name}: {weights} holds a {have} autoencoder, not {self.kind}")
        n = len(self.bundle.quantizers.levels)
        if self.quality is not None and (self.quality != int(self.quality) or self.quality > n):
            raise CodecError(f"{self.name}: quality must be a whole level 1-{n} for this bundle "
                             f"({', '.join(self.bundle.quantizers.levels)})")  # fmt: skip

    @property
    def level(self) -> str:
        return self.bundle.quantizers.levels[int(self.quality or self.default_quality) - 1]

    def encode(self, tile: np.ndarray) -> bytes:
        return self.encode_batch([tile])[0]

    def decode(self, data: bytes, shape: tuple[int, int, int] | None = None) -> np.ndarray:
        return self.decode_batch([data], shape)[0]

    def encode_batch(self, tiles: list[np.ndarray]) -> list[bytes]:
        return code_tiles(self.bundle, tiles, int(self.quality or self.default_quality))

    def decode_batch(
        self, blobs: list[bytes], shape: tuple[int, int, int] | None = None
    ) -> list[np.ndarray]:
        if shape is not None:  # refuse other sizes from the header, before the decoder runs
            for b in blobs:
                _, _, h, w = parse_header(b)
                if (h, w, 3) != tuple(shape):
                    raise CodecError(f"{self.name}: tile is not {shape} (header {h} x {w})")
        try:
            return decode_tiles(self.bundle, blobs)
        except CodecError:
            raise
        except Exception as e:  # damaged streams: constriction / numpy errors
            raise CodecError(f"{self.name}: cannot decode tile ({e})") from None

    def library_version(self) -> str:
        from importlib.metadata import version

        libs = [f"torch {version('torch')}", f"constriction {version('constriction')}"]
        if self.kind != "pathae":
            libs.append(f"diffusers {version('diffusers')}")
        return ", ".join(libs)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["model"] = {"name": self.bundle.name, "version": self.bundle.version,
                      "weights_sha256": self.bundle.weights_sha256}  # fmt: skip
        d["level"] = self.level
        return d

    @classmethod
    def ready(cls) -> bool:
        """The shipped `pathae` always; a diffusers bundle once its folder is configured."""
        return cls.kind == "pathae" or bool(cls.env_var and os.environ.get(cls.env_var))


class KLCodec(AutoencoderCodec):
    """A diffusers AutoencoderKL bundle (e.g. an SD VAE) as a codec: weights=FOLDER."""

    name = "ae-kl"
    kind = "AutoencoderKL"
    env_var = "SLIDEPRESS_AE_KL"
    sweeps = {"downstream": (1, 2, 3, 4)}


class DCCodec(AutoencoderCodec):
    """A diffusers AutoencoderDC bundle (DC-AE) as a codec: weights=FOLDER."""

    name = "ae-dc"
    kind = "AutoencoderDC"
    env_var = "SLIDEPRESS_AE_DC"
    sweeps = {"downstream": (1, 2, 3, 4)}
