"""The NIC baseline: each patch becomes the mean of its pixels (C = 3, 0-255 scale)."""

from __future__ import annotations

import numpy as np

from .base import Encoder


class MeanRGB(Encoder):
    name = "mean-rgb"
    version = "1"
    dim = 3
    rotation_equivariant = True

    def encode(self, patches: np.ndarray) -> np.ndarray:
        n = patches.shape[0]
        flat = patches.reshape(n, -1, 3)
        return flat.mean(axis=1, dtype=np.float64).astype(np.float32)


def mean_rgb(device: str | None = None) -> Encoder:  # noqa: ARG001 (numpy only)
    return MeanRGB()
