"""The contract every NIC training method fulfils, its config, and the method registry.

A method owns its networks and its objective (CompressAI style: one class per model, looked
up by name). The generic loop in `slidepress.train` only calls `training_step` /
`validation_step`; what a method needs from the data is said by `data_kind`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

# Images enter every NIC network scaled to [-1, 1] (the VAE and BiGAN decoders end in tanh).
NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@dataclass
class NICConfig:
    """Everything needed to rebuild a method's networks (stored in every `config.json`)."""

    method: str
    patch_size: int = 128
    mpp: float = 0.5
    code_size: int = 128
    lr: float = 1e-3
    options: dict[str, Any] = field(default_factory=dict)  # method-specific (gamma, tasks, ...)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NICConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class NICMethod(nn.Module):
    """Networks + objective of one NIC encoder-training method."""

    name: ClassVar[str] = "base"
    # what the loop must feed: "images" (unlabelled), "labelled", "pairs" or "tasks"
    data_kind: ClassVar[str] = "images"
    defaults: ClassVar[dict[str, Any]] = {}
    # weight prefixes only training needs (e.g. a GAN's discriminator): left out of shipped files
    training_only: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: NICConfig):
        super().__init__()
        self.config = config
        self.opt = {**self.defaults, **config.options}

    def embedder(self) -> nn.Module:
        """The frozen patch -> code network used by `encode` (input normalised to [-1, 1])."""
        raise NotImplementedError

    def make_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=self.config.lr)]

    def training_step(self, batch: Any, optimizers: list[torch.optim.Optimizer]) -> dict:
        """One update (backward + step done here, so GANs can alternate). Returns floats."""
        raise NotImplementedError

    @torch.no_grad()
    def validation_step(self, batch: Any) -> dict:
        """Floats for the log; `loss` drives LR decay, early stopping and the best checkpoint."""
        raise NotImplementedError

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Optional image panels (real vs reconstructed / generated) in [-1, 1]."""
        return {}


def single_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


METHODS: dict[str, type[NICMethod]] = {}


def register_method(name: str):
    def deco(cls: type[NICMethod]) -> type[NICMethod]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def build_method(config: NICConfig) -> NICMethod:
    if config.method not in METHODS:
        raise ValueError(
            f"unknown NIC method {config.method!r}; known: {', '.join(sorted(METHODS))}"
        )
    return METHODS[config.method](config)
