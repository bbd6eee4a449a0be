"""Neural Image Compression encoders: trainable methods (VAE, contrastive, BiGAN, multitask,
supervised) and the registry entries for the weights shipped with slidepress (`nic-*`)."""

from .base import METHODS, NORMALIZATION, NICConfig, NICMethod, build_method, register_method

__all__ = ["METHODS", "NORMALIZATION", "NICConfig", "NICMethod", "build_method", "register_method"]

from . import bigan, contrastive, multitask, vae  # noqa: E402,F401  (register the methods)
