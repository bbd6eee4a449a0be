"""The tile codec contract: uint8 RGB tile -> bytes -> uint8 RGB tile, with one quality knob.

Every codec declares the range and direction of its quality knob and its default sweeps of
it, so benchmarks and the CLI can validate and sweep it without special cases, and records
library versions for metadata.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..errors import CodecError


class Codec(ABC):
    name: str = "base"
    suffix: str = ".bin"  # file suffix of one coded tile
    quality_range: tuple[float, float] = (0, 100)
    default_quality: float | None = None
    higher_is_better: bool = True  # False where the knob is a quantisation step
    lossless: bool = False
    library: str = "imagecodecs"
    batched: bool = False  # True where encode_batch / decode_batch beat one tile at a time
    # Default quality sweeps, low to high quality, by the command that sweeps them: "bench"
    # (`bench codecs`: covering JPEG q30-95's range on the shared data, PSNR about 27-34 dB at
    # 256 px, with some margin, for BD-rates) and "downstream" (`eval downstream`: down to
    # where a probe's AUC drops). Without one, `bench codecs` codes the default quality and
    # `eval downstream` asks for --qualities.
    sweeps: ClassVar[dict[str, tuple[float, ...]]] = {}

    def __init__(self, quality: float | None = None, **params: Any):
        q = self.default_quality if quality is None else float(quality)
        if q is not None:
            lo, hi = self.quality_range
            if not lo <= q <= hi:
                raise CodecError(f"{self.name}: quality {q:g} outside its range {lo:g}-{hi:g}")
        self.quality = q
        self.params = params

    @abstractmethod
    def encode(self, tile: np.ndarray) -> bytes:
        """(H, W, 3) uint8 -> coded bytes."""

    @abstractmethod
    def decode(self, data: bytes, shape: tuple[int, int, int] | None = None) -> np.ndarray:
        """Coded bytes -> (H, W, 3) uint8. With `shape`, a tile declaring any other size is
        refused before its pixels are allocated (a few KB can declare 65535^2 pixels)."""

    def encode_batch(self, tiles: list[np.ndarray]) -> list[bytes]:
        """Several tiles at once; a codec that gains from batches (a neural network)
        overrides this and sets `batched`."""
        return [self.encode(t) for t in tiles]

    def decode_batch(
        self, blobs: list[bytes], shape: tuple[int, int, int] | None = None
    ) -> list[np.ndarray]:
        return [self.decode(b, shape) for b in blobs]

    def library_version(self) -> str:
        return ""

    @classmethod
    def ready(cls) -> bool:
        """Whether `get_codec(name)` works with no parameters here: False for a codec that
        needs weights the user supplies (the service offers only ready codecs)."""
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "quality": self.quality,
            "params": self.params,
            "lossless": self.lossless,
            "library": self.library,
            "library_version": self.library_version(),
        }


def check_tile(tile: np.ndarray) -> np.ndarray:
    if tile.dtype != np.uint8 or tile.ndim != 3 or tile.shape[2] != 3:
        raise CodecError(f"tiles must be (H, W, 3) uint8, got {tile.shape} {tile.dtype}")
    return np.ascontiguousarray(tile)
