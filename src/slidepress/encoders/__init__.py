"""Patch encoders behind one interface; `get_encoder("name")` or `get_encoder("prefix:arg")`."""

from . import mean_rgb, nic_weights, timm_encoder, torchscript  # noqa: F401 (register)
from .base import Encoder, file_sha256
from .registry import ENCODERS, LOADERS, available, get_encoder

__all__ = ["ENCODERS", "LOADERS", "Encoder", "available", "file_sha256", "get_encoder"]
