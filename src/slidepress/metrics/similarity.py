"""Similarity of decoded tiles to their originals, scored one way for every caller: `compress`
(over the stored level-0 tiles of a slide), `bench codecs` (per codec and quality) and
`eval downstream` (per codec setting on PCam patches).

`SimilarityScorer` holds what is asked for: pixel scores (PSNR, and SSIM / MS-SSIM with
`structural`), feature similarity (featsim.py, six depths of a pathology ResNet18) and
embedding similarity (embsim.py, any registry encoder). `score(orig, decoded)` gives per-tile
values (`PairScores`); `reference(orig)` computes the originals' side once, to score several
decodings of the same tiles (a benchmark's codecs and qualities). `SimilaritySums` keeps
weighted sums of per-tile feature / embedding similarity (compress weighs a tile by its tissue
pixels) and merges with the sums of another part of the same slide (a band of rows).

The conventions are those of the modules behind each score: PSNR of the pooled MSE, infinite
for identical tiles; SSIM and MS-SSIM as pytorch-msssim computes them, on fewer scales for small
tiles (quality.py); cosine similarities in float64, exactly 1 for identical tiles (featsim.py,
embsim.py). torch is imported only when a torch score is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .featsim import DEPTHS, FeatureScores, FeatureSimilarity, Tiles, cosine_rows
from .quality import TileScores, score_tiles

__all__ = ["PairScores", "Reference", "SimilarityScorer", "SimilaritySums"]


@dataclass
class PairScores:
    """Per-tile scores of decoded tiles against their originals; None: not asked for."""

    pixels: TileScores | None = None  # MSE, PSNR (+ SSIM, MS-SSIM when structural)
    featsim: FeatureScores | None = None  # (N, 6) cosine similarities, DEPTHS order
    embsim: np.ndarray | None = None  # (N,) mean cosine similarity of patch embeddings


@dataclass
class Reference:
    """The original tiles and what a scorer computed of them once (features, embeddings)."""

    tiles: list[np.ndarray]
    tile_mpp: float | None
    features: Any = field(default=None, repr=False)  # featsim.Reference
    embeddings: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


class SimilarityScorer:
    """The scores asked for, and the networks behind them (loaded once, here).

    `pixels`: MSE and PSNR; `structural`: also SSIM and MS-SSIM (torch); `featsim`: True for
    the shipped network, or a loaded `FeatureSimilarity`; `encoder`: a registry name or an
    Encoder whose embeddings `embsim` compares."""

    def __init__(
        self,
        *,
        pixels: bool = False,
        structural: bool = False,
        featsim: bool | FeatureSimilarity = False,
        encoder: Any = None,
    ):
        self.pixels = pixels or structural
        self.structural = structural
        if featsim is True:
            from .featsim import shipped

            featsim = shipped()
        self.featsim: FeatureSimilarity | None = featsim or None
        self.encoder = None
        if encoder:
            from .embsim import resolve_encoder

            self.encoder = resolve_encoder(encoder)

    def describe(self) -> dict[str, Any]:
        """The networks used (None where off)."""
        return {
            "feature_similarity": self.featsim.describe() if self.featsim else None,
            "embedding_encoder": self.encoder.describe() if self.encoder else None,
        }

    def reference(self, orig: Tiles, *, tile_mpp: float | None = None) -> Reference:
        """The originals' features and patch embeddings, computed once; `tile_mpp`: the tiles'
        um/px (embsim brings them to the encoder's; None: taken as the encoder's)."""
        tiles = [np.asarray(t) for t in orig]
        ref = Reference(tiles, tile_mpp)
        if self.featsim:
            ref.features = self.featsim.reference(tiles)
        if self.encoder:
            from .embsim import patch_embeddings

            ref.embeddings = patch_embeddings(self.encoder, tiles, tile_mpp=tile_mpp)
        return ref

    def score(
        self, orig: Tiles | Reference, decoded: Tiles, *, tile_mpp: float | None = None
    ) -> PairScores:
        """Each decoded tile against its original (tiles, or a `reference` of them, whose
        `tile_mpp` then applies)."""
        if isinstance(orig, Reference):
            ref, tiles, tile_mpp = orig, orig.tiles, orig.tile_mpp
        else:
            ref, tiles = None, orig
        out = PairScores()
        if self.pixels:
            out.pixels = score_tiles(tiles, decoded, structural=self.structural)
        if self.featsim:
            against = ref.features if ref is not None else tiles
            out.featsim = self.featsim.score(against, decoded)
        if self.encoder:
            from .embsim import embedding_similarity, patch_embeddings, tile_means

            if ref is not None and ref.embeddings is not None:
                owner, emb_ref = ref.embeddings
                _, emb = patch_embeddings(self.encoder, decoded, tile_mpp=tile_mpp)
                out.embsim = tile_means(owner, cosine_rows(emb_ref, emb), len(decoded))
            else:
                out.embsim = embedding_similarity(self.encoder, tiles, decoded,
                                                  tile_mpp=tile_mpp)  # fmt: skip
        return out


@dataclass
class SimilaritySums:
    """Weighted sums of per-tile feature similarity (per depth) and embedding similarity,
    for weighted means over many batches; the sums of parts of a slide `merge`."""

    feat_sum: np.ndarray = field(default_factory=lambda: np.zeros(len(DEPTHS)))
    emb_sum: float = 0.0
    weight: float = 0.0
    tiles: int = 0

    def add(self, scores: PairScores, weights: np.ndarray) -> None:
        w = np.asarray(weights, np.float64)
        if scores.featsim is not None:
            self.feat_sum += w @ scores.featsim.per_depth
        if scores.embsim is not None:
            self.emb_sum += float(w @ scores.embsim)
        self.weight += float(w.sum())
        self.tiles += len(w)

    def merge(self, other: SimilaritySums) -> None:
        self.feat_sum += other.feat_sum
        self.emb_sum += other.emb_sum
        self.weight += other.weight
        self.tiles += other.tiles

    def feature_means(self) -> np.ndarray | None:
        """(6,) weighted mean per depth; None when nothing was weighed."""
        return self.feat_sum / self.weight if self.weight else None

    def embedding_mean(self) -> float | None:
        return self.emb_sum / self.weight if self.weight else None

    def to_dict(self) -> dict[str, Any]:
        return {"feat_sum": self.feat_sum.tolist(), "emb_sum": self.emb_sum,
                "weight": self.weight, "tiles": self.tiles}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimilaritySums:
        return cls(np.asarray(d["feat_sum"], np.float64), d["emb_sum"], d["weight"], d["tiles"])
