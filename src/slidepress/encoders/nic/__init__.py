"""Neural Image Compression encoders: the trainable methods (VAE, contrastive, BiGAN,
multitask, supervised, and SimCLR) behind one registry.

A method is one module with a `NICMethod` subclass plus one `METHODS.add(...)` line below,
which also declares its default learning rate (`lr=`, else 1e-3). Entries are lazy: listing
the methods (help texts, errors) and building a `NICConfig` import no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import UsageError
from ...registry import Registry
from .config import NORMALIZATION, NICConfig

if TYPE_CHECKING:
    from .base import NICMethod

DEFAULT_LR = 1e-3  # Adam, Tellez et al. 2019

METHODS: Registry[type[NICMethod]] = Registry("NIC method", UsageError, name_attr="name")
_NIC = "slidepress.encoders.nic"
METHODS.add(
    "vae",
    f"{_NIC}.vae:VAE",
    summary="variational autoencoder (TPAMI 2019, A.1) on --data images",
)
METHODS.add(
    "contrastive",
    f"{_NIC}.contrastive:Contrastive",
    summary="same/different location pairs from --slides (TPAMI 2019, A.2)",
)
METHODS.add(
    "bigan",
    f"{_NIC}.bigan:BiGAN",
    summary="BiGAN at half resolution on --data images (TPAMI 2019, A.3)",
    lr=2e-4,  # adversarial training: slower than the other methods
)
METHODS.add(
    "multitask",
    f"{_NIC}.multitask:Multitask",
    summary="a task per --data folder (+ tissue from --slides) (MIDL 2020)",
)
METHODS.add(
    "supervised",
    f"{_NIC}.multitask:Supervised",
    summary="single-task baseline: exactly one --data folder",
)

METHODS.add(
    "simclr",
    f"{_NIC}.simclr:SimCLR",
    summary="SimCLR: two H&E-augmented views per --data image, NT-Xent (Chen et al. 2020)",
)

register_method = METHODS.register  # decorator for methods defined outside this package


def default_lr(method: str) -> float:
    """The method's declared Adam learning rate (UsageError for an unknown method)."""
    return float(METHODS.entry(method).options.get("lr", DEFAULT_LR))


def build_method(config: NICConfig) -> NICMethod:
    return METHODS.get(config.method)(config)


def __getattr__(name: str) -> Any:  # the torch-backed base class, loaded on first use
    if name == "NICMethod":
        from .base import NICMethod

        return NICMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_LR",
    "METHODS",
    "NORMALIZATION",
    "NICConfig",
    "NICMethod",
    "build_method",
    "default_lr",
    "register_method",
]
