"""Feature similarity (metrics/featsim) and embedding similarity (metrics/embsim) of each codec
and quality: the benchmark's columns `featsim_<depth>`, `featsim_mean`, `featsim_db` and
`embsim` (NaN when switched off).

The originals' features and embeddings are computed once per input and reused for every codec
and quality (half the cost); only the current input's are kept (about 3 MB of features per
256 px tile). `featsim_db` = -10 log10(1 - featsim_mean), the axis of its BD-rate (it spreads
values crowded near 1, as MS-SSIM in dB does).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...metrics.featsim import DEPTHS
from .inputs import BenchInput

FEATSIM_COLUMNS = (*[f"featsim_{d}" for d in DEPTHS], "featsim_mean", "featsim_db")
COLUMNS = (*FEATSIM_COLUMNS, "embsim")


def similarity_db(value: float) -> float:
    """-10 log10(1 - value); inf for 1, NaN for NaN."""
    if not math.isfinite(value):
        return math.nan
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)


class Similarity:
    """The scorers of one benchmark run; `columns(inp, decoded)` gives a row's values."""

    def __init__(self, feature: bool, encoder: str | None):
        from ...metrics.featsim import shipped

        self.featsim = shipped() if feature else None
        self.encoder = None
        if encoder:
            from ...metrics.embsim import resolve_encoder

            self.encoder = resolve_encoder(encoder)
        self._key: str | None = None
        self._ref: Any = None
        self._emb: tuple[np.ndarray, np.ndarray] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "feature_similarity": self.featsim.describe() if self.featsim else None,
            "embedding_encoder": self.encoder.describe() if self.encoder else None,
        }

    def _prepare(self, inp: BenchInput) -> None:
        if self._key == inp.name:
            return
        from ...metrics.embsim import patch_embeddings

        self._key, self._ref, self._emb = inp.name, None, None  # free the previous input's
        if self.featsim:
            self._ref = self.featsim.reference(inp.tiles)
        if self.encoder:
            self._emb = patch_embeddings(self.encoder, inp.tiles, tile_mpp=inp.mpp)

    def columns(self, inp: BenchInput, decoded: list[np.ndarray]) -> dict[str, float]:
        """Means over the input's tiles (each tile weighs the same)."""
        from ...metrics.embsim import patch_embeddings, tile_means
        from ...metrics.featsim import cosine_rows

        self._prepare(inp)
        out = dict.fromkeys(COLUMNS, math.nan)
        if self.featsim:
            out.update(self.featsim.score(self._ref, decoded).summary())
            out["featsim_db"] = similarity_db(out["featsim_mean"])
        if self.encoder and self._emb is not None:
            owner, ref = self._emb
            _, emb = patch_embeddings(self.encoder, decoded, tile_mpp=inp.mpp)
            out["embsim"] = float(tile_means(owner, cosine_rows(ref, emb), len(decoded)).mean())
        return out


def load_similarity(feature: bool, encoder: str | None) -> Similarity | None:
    """None when both are off (the rows then hold NaN in COLUMNS)."""
    return Similarity(feature, encoder) if feature or encoder else None
