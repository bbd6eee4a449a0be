"""The learned codec behind the Codec interface (`--codec learned`).

Quality is the rate level of the one variable-rate model, 1 (smallest files) to 8, in steps
of 1/16. Tiles are coded in batches (`encode_batch` / `decode_batch`): the pipeline hands a
block of tiles at once. `describe()` carries the model name, version and weights hash, which
containers record and check before decoding.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ... import zoo
from ...errors import CodecError
from ..base import Codec, check_tile

WEIGHTS = zoo.shipped_path("codec-he-shallow")
_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


def load_model(folder: str | Path | None = None):
    """One LearnedModel per weights folder per process (thread-safe)."""
    from .runtime import LearnedModel

    key = str(Path(folder or WEIGHTS).resolve())
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = LearnedModel(key)
        return _MODELS[key]


class LearnedCodec(Codec):
    """slidepress's learned H&E codec: hyperprior + shallow synthesis, exact integer decode."""

    name = "learned"
    suffix = ".slc"
    quality_range = (1, 8)
    default_quality = 5
    sweeps = {"downstream": (1, 3, 5, 8)}
    library = "slidepress"
    batched = True

    def __init__(self, quality: float | None = None, weights: str | None = None, **params: Any):
        if weights is not None:
            params["weights"] = str(weights)
        super().__init__(quality, **params)
        self.model = load_model(weights)

    def encode(self, tile: np.ndarray) -> bytes:
        return self.encode_batch([tile])[0]

    def decode(self, data: bytes, shape: tuple[int, int, int] | None = None) -> np.ndarray:
        return self.decode_batch([data], shape)[0]

    def encode_batch(self, tiles: list[np.ndarray]) -> list[bytes]:
        tiles = [check_tile(t) for t in tiles]
        out: list[bytes | None] = [None] * len(tiles)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tiles):
            by_shape.setdefault(t.shape, []).append(i)
        for idx in by_shape.values():
            for i, data in zip(idx, self.model.encode_batch([tiles[i] for i in idx], self.quality),
                               strict=True):  # fmt: skip
                out[i] = data
        return out  # type: ignore[return-value]

    def decode_batch(
        self, blobs: list[bytes], shape: tuple[int, int, int] | None = None
    ) -> list[np.ndarray]:
        if shape is not None:  # refuse other sizes from the header, before synthesis
            from .runtime import HEADER

            for b in blobs:
                if len(b) >= HEADER.size:
                    _, _, _, h, w = HEADER.unpack_from(b)
                    if (h, w, 3) != tuple(shape):
                        raise CodecError(f"{self.name}: tile is not {shape} (header {h} x {w})")
        try:
            return self.model.decode_batch(blobs)
        except CodecError:
            raise
        except Exception as e:  # damaged streams: constriction / numpy errors
            raise CodecError(f"{self.name}: cannot decode tile ({e})") from None

    def library_version(self) -> str:
        from importlib.metadata import version

        import constriction  # noqa: F401

        return f"constriction {version('constriction')}"

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        cfg = self.model.config
        d["model"] = {"name": cfg.name, "version": cfg.version,
                      "weights_sha256": self.model.weights_sha256}  # fmt: skip
        return d
