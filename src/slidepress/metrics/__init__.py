"""Image quality and rate: PSNR, SSIM, MS-SSIM (pytorch-msssim), bits per pixel, ratios."""

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

__all__ = [
    "MS_SSIM_WEIGHTS",
    "RAW_BPP",
    "TileScores",
    "bits_per_pixel",
    "compression_ratio",
    "ms_ssim",
    "ms_ssim_db",
    "ms_ssim_scales",
    "mse",
    "psnr",
    "psnr_from_mse",
    "score_tiles",
    "ssim",
]
