"""Contrastive (Siamese) encoder (Tellez et al. 2019, appendix A.2).

Two weight-sharing encoders; their concatenated codes -> dense 256 -> sigmoid predict whether
the two patches show the same location (independently, heavily augmented) or a different one
(an adjacent non-overlapping location, or another image). Binary cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import NICMethod
from .blocks import ConvEncoder


class Contrastive(NICMethod):
    data_kind = "pairs"
    defaults = {"widths": [32, 64, 128, 256, 512], "dense": 512, "head": 256}

    def __init__(self, config):
        super().__init__(config)
        o = self.opt
        self.encoder = ConvEncoder(config.patch_size, config.code_size, o["widths"], o["dense"])
        self.head = nn.Sequential(
            nn.Linear(2 * config.code_size, o["head"]),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(o["head"], 1),
        )

    def embedder(self) -> nn.Module:
        return self.encoder

    def losses(self, batch):
        a, b, same = batch
        n = a.shape[0]
        codes = self.encoder(torch.cat([a, b]))  # one pass keeps BN statistics shared
        logit = self.head(torch.cat([codes[:n], codes[n:]], dim=1)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logit, same.float())
        acc = ((logit > 0) == same.bool()).float().mean()
        return loss, {"loss": loss.item(), "accuracy": acc.item()}
