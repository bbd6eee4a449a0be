"""A NIC method's configuration: torch-free, so the command line can build and check it
before torch loads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Images enter every NIC network scaled to [-1, 1] (the VAE and BiGAN decoders end in tanh).
NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@dataclass
class NICConfig:
    """Everything needed to rebuild a method's networks (stored in every `config.json`)."""

    method: str
    patch_size: int = 128
    mpp: float = 0.5
    code_size: int = 128
    lr: float | None = None  # None: the method's default learning rate (its registry entry)
    options: dict[str, Any] = field(default_factory=dict)  # method-specific (gamma, tasks, ...)

    def __post_init__(self) -> None:
        if self.lr is None:
            from . import default_lr

            self.lr = default_lr(self.method)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NICConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
