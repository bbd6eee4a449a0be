"""The NIC embedding grid: one C-vector per cell, kept in the slide's spatial layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Arrays every format must round-trip exactly; `metadata` travels as JSON.
ARRAY_FIELDS = ("features", "mask", "coords", "tissue_fraction", "tissue_mask")


@dataclass
class EmbeddingGrid:
    features: np.ndarray  # (rows, cols, C) float32 or float16; zeros where mask is False
    mask: np.ndarray  # (rows, cols) bool: cell was kept (tissue) and encoded
    coords: np.ndarray  # (rows, cols, 2) int64: level-0 (x, y) of each cell's top-left
    tissue_fraction: np.ndarray  # (rows, cols) float32
    tissue_mask: np.ndarray  # (h, w) bool, thumbnail resolution (see metadata.tissue)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r, c = self.mask.shape
        if self.features.shape[:2] != (r, c) or self.coords.shape != (r, c, 2):
            raise ValueError(
                f"inconsistent grid arrays: features {self.features.shape}, "
                f"mask {self.mask.shape}, coords {self.coords.shape}"
            )

    @classmethod
    def from_features(
        cls,
        features: np.ndarray,
        mask: np.ndarray | None = None,
        cell: int = 1,
        metadata: dict[str, Any] | None = None,
    ) -> EmbeddingGrid:
        """A grid made in memory (synthetic benchmarks, tests): cells of `cell` level-0 px,
        mask = any non-zero feature unless given."""
        features = np.asarray(features)
        if mask is None:
            mask = np.abs(features).sum(axis=2) > 0
        rows, cols = mask.shape
        ys, xs = np.mgrid[0:rows, 0:cols]
        coords = np.stack([xs * cell, ys * cell], axis=2).astype(np.int64)
        return cls(
            features=features,
            mask=mask.astype(bool),
            coords=coords,
            tissue_fraction=mask.astype(np.float32),
            tissue_mask=mask.astype(bool),
            metadata=dict(metadata or {}),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.features.shape)  # type: ignore[return-value]

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ARRAY_FIELDS}

    def equals(self, other: EmbeddingGrid) -> bool:
        """Exact equality of every array (dtype included) and of the metadata."""
        for k in ARRAY_FIELDS:
            a, b = getattr(self, k), getattr(other, k)
            if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
                return False
        return self.metadata == other.metadata
