"""SimCLR encoder (Chen et al., ICML 2020): a modern self-supervised sixth NIC method.

Two independently augmented views of every context in the batch (the H&E augmentations of
`training.augment`: flips, rotations, affine, elastic, HED stain jitter, colour jitter, blur,
noise, and a random crop position within the context); the encoder (the VAE's: strided 3x3
convs 32..512 + BN + LeakyReLU, dense 512, linear C) gives the code, a projection MLP
(C -> 512 -> 128) feeds the NT-Xent loss: each view must pick its partner among the other
2N - 2 views of the batch (temperature `temperature`). The code (before the projection) is
what `encode` uses, as in SimCLR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import NICMethod
from .blocks import ConvEncoder


def nt_xent(p: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over 2N projections (views i and i + N are partners): loss and the fraction of
    views whose nearest other view is their partner."""
    n2 = p.shape[0]
    n = n2 // 2
    z = F.normalize(p, dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(n2, dtype=torch.bool, device=p.device), float("-inf"))
    target = torch.cat([torch.arange(n, n2), torch.arange(0, n)]).to(p.device)
    loss = F.cross_entropy(sim, target)
    acc = (sim.argmax(1) == target).float().mean()
    return loss, acc


class SimCLR(NICMethod):
    data_kind = "views"
    defaults = {"widths": [32, 64, 128, 256, 512], "dense": 512, "proj_hidden": 512,
                "proj_dim": 128, "temperature": 0.2}  # fmt: skip
    training_only = ("projector.",)

    def __init__(self, config):
        super().__init__(config)
        o = self.opt
        self.encoder = ConvEncoder(config.patch_size, config.code_size, o["widths"], o["dense"])
        self.projector = nn.Sequential(
            nn.Linear(config.code_size, o["proj_hidden"]),
            nn.BatchNorm1d(o["proj_hidden"]),
            nn.ReLU(inplace=True),
            nn.Linear(o["proj_hidden"], o["proj_dim"]),
        )

    def embedder(self) -> nn.Module:
        return self.encoder

    def losses(self, batch):
        a, b = batch
        # one pass over both views keeps the BN statistics shared (no leak of view identity)
        p = self.projector(self.encoder(torch.cat([a, b])))
        loss, acc = nt_xent(p, float(self.opt["temperature"]))
        return loss, {"loss": loss.item(), "top1": acc.item()}
