"""Variational autoencoder encoder (Tellez et al. 2019, appendix A.1; Kingma & Welling 2014).

Encoder: strided 3x3 convs (32..512) + BN + LeakyReLU, dense 512, linear mu and log-variance.
Decoder mirrors it with nearest-neighbour upsampling. Loss = MSE + gamma * KL, gamma = 5e-5
(pixel-mean MSE, KL summed over the code and averaged over the batch). The code is mu.

Options added for issue 24 (defaults keep the shipped network and objective):
- `gamma`: the KL weight. Against a pixel-*mean* MSE, 5e-5 is a KL weight of ~0.6 per nat
  against the pixel-*summed* squared error of a 64 px patch (x 12288): strong enough that the
  shipped model keeps ~49 nats in its code and reconstructs colour fields (14 dB).
- `kl_warmup`: fraction of the training budget over which the KL weight ramps linearly from 0
  to `gamma` (KL annealing, Bowman et al. 2016), so the decoder learns to use the code first.
- `full_res_conv`: a conv at full resolution after the decoder's last upsampling (the shipped
  decoder's output is made of 2x2 blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import NICMethod
from .blocks import ConvDecoder, ConvEncoder


class _Mu(nn.Module):
    def __init__(self, encoder: ConvEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]


class VAE(NICMethod):
    data_kind = "images"
    defaults = {"widths": [32, 64, 128, 256, 512], "dense": 512, "gamma": 5e-5,
                "kl_warmup": 0.0, "full_res_conv": False}  # fmt: skip

    def __init__(self, config):
        super().__init__(config)
        p, c, o = config.patch_size, config.code_size, self.opt
        self.encoder = ConvEncoder(p, c, o["widths"], dense=o["dense"], outputs=2)
        self.decoder = ConvDecoder(p, c, o["widths"], dense=o["dense"],
                                   full_res_conv=o["full_res_conv"])  # fmt: skip

    def kl_weight(self) -> float:
        """`gamma`, ramped from 0 over the first `kl_warmup` of the budget when training."""
        warm = float(self.opt["kl_warmup"])
        if not self.training or warm <= 0:
            return float(self.opt["gamma"])
        return float(self.opt["gamma"]) * min(1.0, self.progress / warm)

    def embedder(self) -> nn.Module:
        return _Mu(self.encoder)

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        recon = self.decoder(z)
        mse = F.mse_loss(recon, x)
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
        loss = mse + self.kl_weight() * kl
        return loss, {"loss": loss.item(), "mse": mse.item(), "kl": kl.item()}

    @torch.no_grad()
    def validation_step(self, batch):
        logs = self.losses(batch)[1]
        # PSNR of the reconstruction on the [0, 1] scale: (x in [-1,1]) -> range 2
        logs["psnr"] = float(10 * torch.log10(torch.tensor(4.0 / max(logs["mse"], 1e-12))))
        return logs

    @torch.no_grad()
    def preview(self, images):
        mu, _ = self.encoder(images)
        return {"real": images, "reconstructed": self.decoder(mu)}
