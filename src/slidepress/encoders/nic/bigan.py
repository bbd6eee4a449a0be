"""BiGAN encoder (Donahue et al. 2017; Tellez et al. 2019, appendix A.3).

Generator G: z ~ N(0, 1) -> image; encoder E: image -> z; discriminator D on (image, code)
pairs with dropout. Minimax: D tells (x, E(x)) from (G(z), z); G and E fool it (non-saturating
form). As in the paper, the networks work at half the patch resolution for stability: the
embedder average-pools the patch by 2 before E.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import NICMethod, optimizer_step
from .blocks import ConvDecoder, ConvEncoder, check_patch, conv_bn_act


class _HalfRes(nn.Module):
    def __init__(self, encoder: nn.Module, factor: int):
        super().__init__()
        self.encoder, self.factor = encoder, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor > 1:
            x = F.avg_pool2d(x, self.factor)
        return self.encoder(x)


class Discriminator(nn.Module):
    def __init__(self, size: int, code_size: int, widths, dropout: float):
        super().__init__()
        side = check_patch(size, len(widths))
        layers, c = [], 3
        for w in widths:
            layers += [conv_bn_act(c, w), nn.Dropout(dropout)]
            c = w
        self.x_path = nn.Sequential(*layers, nn.Flatten())
        self.z_path = nn.Sequential(
            nn.Linear(code_size, 512), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)
        )
        self.joint = nn.Sequential(
            nn.Linear(c * side * side + 512, 512),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, 1),
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.x_path(x), self.z_path(z)], 1)).squeeze(1)


class BiGAN(NICMethod):
    data_kind = "images"
    defaults = {"widths": [64, 128, 256], "downscale": 2, "dropout": 0.2, "betas": [0.5, 0.999]}
    training_only = ("D.",)

    def __init__(self, config):
        super().__init__(config)
        o, c = self.opt, config.code_size
        self.size = config.patch_size // o["downscale"]
        self.E = ConvEncoder(self.size, c, o["widths"], dense=None)
        self.G = ConvDecoder(self.size, c, o["widths"], dense=512)
        self.D = Discriminator(self.size, c, o["widths"], o["dropout"])

    def embedder(self) -> nn.Module:
        return _HalfRes(self.E, self.opt["downscale"])

    def _small(self, x: torch.Tensor) -> torch.Tensor:
        f = self.opt["downscale"]
        return F.avg_pool2d(x, f) if f > 1 else x

    def make_optimizers(self):
        betas = tuple(self.opt["betas"])
        lr = self.config.lr
        ge = list(self.G.parameters()) + list(self.E.parameters())
        return [
            torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(ge, lr=lr, betas=betas),
        ]

    def _logits(self, x, detach: bool = False):
        z = torch.randn(x.shape[0], self.config.code_size, device=x.device)
        ex, gz = self.E(x), self.G(z)
        if detach:
            ex, gz = ex.detach(), gz.detach()
        return self.D(x, ex), self.D(gz, z)

    def training_step(self, batch, optimizers):
        opt_d, opt_ge = optimizers
        x = self._small(batch)
        ones, zeros = (
            torch.ones(x.shape[0], device=x.device),
            torch.zeros(x.shape[0], device=x.device),
        )
        real, fake = self._logits(x, detach=True)  # D step
        loss_d = F.binary_cross_entropy_with_logits(
            real, ones
        ) + F.binary_cross_entropy_with_logits(fake, zeros)
        optimizer_step(loss_d, opt_d)
        real, fake = self._logits(x)  # G/E step: swapped labels (non-saturating minimax)
        loss_ge = F.binary_cross_entropy_with_logits(
            real, zeros
        ) + F.binary_cross_entropy_with_logits(fake, ones)
        optimizer_step(loss_ge, opt_ge)
        return {"loss_d": loss_d.item(), "loss_ge": loss_ge.item()}

    @torch.no_grad()
    def validation_step(self, batch):
        # GAN losses do not measure progress; G(E(x)) ~ x does (the BiGAN inverts G with E).
        x = self._small(batch)
        mse = F.mse_loss(self.G(self.E(x)), x).item()
        real, fake = self._logits(x)
        d_acc = ((real > 0).float().mean() + (fake < 0).float().mean()).item() / 2
        return {"loss": mse, "recon_mse": mse, "d_accuracy": d_acc}

    @torch.no_grad()
    def preview(self, images):
        x = self._small(images)
        z = torch.randn(x.shape[0], self.config.code_size, device=x.device)
        return {"real": x, "reconstructed": self.G(self.E(x)), "generated": self.G(z)}
