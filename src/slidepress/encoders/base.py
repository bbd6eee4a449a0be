"""The encoder contract: uint8 patches in, one vector per patch out.

An encoder carries everything extraction needs to know about it (input size, resolution it
expects, embedding size, normalisation, weights hash), so the pipeline never hard-codes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..zoo import weights_sha256 as file_sha256  # the one weights hash (a file: its bytes)

__all__ = ["Encoder", "file_sha256"]


class Encoder(ABC):
    name: str = "base"
    version: str = "0"
    patch_size: int | None = None  # input side the encoder wants; None = any
    mpp: float | None = None  # resolution it was trained at; None = whatever is asked
    dim: int = 0  # embedding size C
    normalization: dict[str, Any] | None = None
    weights_hash: str | None = None
    rotation_equivariant: bool = False  # encode(rot(patch)) == encode(patch) exactly

    @abstractmethod
    def encode(self, patches: np.ndarray) -> np.ndarray:
        """(N, P, P, 3) uint8 -> (N, C) float32."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "patch_size": self.patch_size,
            "mpp": self.mpp,
            "dim": self.dim,
            "normalization": self.normalization,
            "weights_hash": self.weights_hash,
        }
