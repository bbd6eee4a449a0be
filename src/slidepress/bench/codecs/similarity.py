"""The benchmark's quality columns of each codec and quality, from the one scorer of
`metrics.similarity`: PSNR (pooled MSE), SSIM and MS-SSIM always; feature similarity
(metrics/featsim: `featsim_<depth>`, `featsim_mean`, `featsim_db`) and embedding similarity
(metrics/embsim: `embsim`) when asked for (NaN otherwise).

The originals' side (features, embeddings) is computed once per input and reused for every
codec and quality (half the cost); only the current input's is kept (about 3 MB of features
per 256 px tile). `featsim_db` = -10 log10(1 - featsim_mean), the axis of its BD-rate (it
spreads values crowded near 1, as MS-SSIM in dB does).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...metrics.featsim import DEPTHS
from ...metrics.similarity import PairScores, Reference, SimilarityScorer
from .inputs import BenchInput

FEATSIM_COLUMNS = (*[f"featsim_{d}" for d in DEPTHS], "featsim_mean", "featsim_db")
COLUMNS = (*FEATSIM_COLUMNS, "embsim")


def similarity_db(value: float) -> float:
    """-10 log10(1 - value); inf for 1, NaN for NaN."""
    if not math.isfinite(value):
        return math.nan
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)


class Similarity:
    """The scorer of one benchmark run: `score(inp, decoded)` scores a decoding of an input's
    tiles, `columns(scores)` gives a row's feature / embedding similarity values."""

    def __init__(self, feature: bool = False, encoder: str | None = None):
        self.scorer = SimilarityScorer(structural=True, featsim=feature, encoder=encoder or None)
        self._key: str | None = None
        self._ref: Reference | None = None

    @property
    def networks(self) -> bool:
        """Whether feature or embedding similarity is measured."""
        return bool(self.scorer.featsim or self.scorer.encoder)

    def describe(self) -> dict[str, Any] | None:
        """The networks used; None when neither is."""
        return self.scorer.describe() if self.networks else None

    def score(self, inp: BenchInput, decoded: list[np.ndarray]) -> PairScores:
        if self._key != inp.name:  # free the previous input's features first
            self._key, self._ref = None, None
            self._ref = self.scorer.reference(inp.tiles, tile_mpp=inp.mpp)
            self._key = inp.name
        assert self._ref is not None
        return self.scorer.score(self._ref, decoded)

    @staticmethod
    def columns(scores: PairScores) -> dict[str, float]:
        """Means over the input's tiles (each tile weighs the same); NaN where not measured."""
        out = dict.fromkeys(COLUMNS, math.nan)
        if scores.featsim is not None:
            out.update(scores.featsim.summary())
            out["featsim_db"] = similarity_db(out["featsim_mean"])
        if scores.embsim is not None:
            out["embsim"] = float(scores.embsim.mean())
        return out


def load_similarity(feature: bool, encoder: str | None) -> Similarity:
    """The run's scorer (feature and embedding similarity only where asked for)."""
    return Similarity(feature, encoder)
