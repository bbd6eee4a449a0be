"""slidepress's own autoencoder for H&E tiles: a compact convolutional AE, stride 8.

Small on purpose (about 1 M parameters, under 2 MB in fp16): trained on one CPU thread in half
an hour (scripts/train_pathae.py). Latents are bounded (`bound * tanh`), so a static int8 scale
covers them, and the decoder is trained with latent noise, so it tolerates the error of the
K-means quantizer. Imports torch at the top: only `loading.py` imports this module, on use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class AEConfig:
    """Architecture of the own autoencoder (stored in the bundle's pathae.json)."""

    channels: tuple[int, ...] = (48, 64, 96)  # widths of the three stride-2 stages
    latent: int = 8  # latent channels at 1/8 resolution
    bound: float = 2.0  # latents lie in (-bound, bound)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AEConfig:
        return cls(channels=tuple(d["channels"]), latent=int(d["latent"]),
                   bound=float(d["bound"]))  # fmt: skip


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip: detail without more downsampling."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.GELU(), nn.Conv2d(c, c, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PathAENet(nn.Module):
    """encode: (N, 3, H, W) in [0, 1] -> (N, latent, H/8, W/8); decode: the inverse."""

    stride = 8

    def __init__(self, cfg: AEConfig | None = None):
        super().__init__()
        cfg = cfg or AEConfig()
        self.cfg = cfg
        a, b, c = cfg.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, a, 4, 2, 1), nn.GELU(),
            nn.Conv2d(a, b, 4, 2, 1), nn.GELU(),
            nn.Conv2d(b, c, 4, 2, 1), nn.GELU(), ResBlock(c),
            nn.Conv2d(c, cfg.latent, 1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.latent, c, 3, 1, 1), nn.GELU(), ResBlock(c),
            nn.ConvTranspose2d(c, b, 4, 2, 1), nn.GELU(), ResBlock(b),
            nn.ConvTranspose2d(b, a, 4, 2, 1), nn.GELU(), ResBlock(a),
            nn.ConvTranspose2d(a, 3, 4, 2, 1),
        )  # fmt: skip

    @property
    def latent_channels(self) -> int:
        return self.cfg.latent

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b = self.cfg.bound
        return b * torch.tanh(self.encoder(x * 2 - 1) / b)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) * 0.5 + 0.5

    def forward(self, x: torch.Tensor, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        zn = z + noise * torch.randn_like(z) if noise else z
        return self.decode(zn), z
