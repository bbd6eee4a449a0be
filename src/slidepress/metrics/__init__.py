"""Image quality and rate: PSNR, SSIM, MS-SSIM (pytorch-msssim), bits per pixel, ratios;
feature similarity (ResNet18 features at six depths) and embedding similarity (any encoder);
`SimilarityScorer`: all of them for decoded tiles vs their originals, one way for every caller."""

from .embsim import embedding_similarity
from .featsim import DEPTHS, FeatureScores, FeatureSimilarity
from .quality import (
    MS_SSIM_WEIGHTS,
    RAW_BPP,
    TileScores,
    bits_per_pixel,
    compression_ratio,
    ms_ssim,
    ms_ssim_db,
    ms_ssim_scales,
    mse,
    psnr,
    psnr_from_mse,
    score_tiles,
    ssim,
)
from .similarity import PairScores, SimilarityScorer, SimilaritySums

__all__ = [
    "DEPTHS",
    "FeatureScores",
    "FeatureSimilarity",
    "MS_SSIM_WEIGHTS",
    "PairScores",
    "RAW_BPP",
    "SimilarityScorer",
    "SimilaritySums",
    "TileScores",
    "bits_per_pixel",
    "compression_ratio",
    "embedding_similarity",
    "ms_ssim",
    "ms_ssim_db",
    "ms_ssim_scales",
    "mse",
    "psnr",
    "psnr_from_mse",
    "score_tiles",
    "ssim",
]
