"""BiGAN encoder (Donahue et al. 2017; Tellez et al. 2019, appendix A.3).

Generator G: z ~ N(0, 1) -> image; encoder E: image -> z; discriminator D on (image, code)
pairs with dropout. Minimax: D tells (x, E(x)) from (G(z), z); G and E fool it (non-saturating
form). As in the paper, the networks work at half the patch resolution for stability: the
embedder average-pools the patch by 2 before E.

Options added for issue 24 (defaults keep the shipped networks and training):
- `spectral_norm`: spectral normalisation of every D layer (Miyato et al. 2018), in place of
  D's batch norm (BN mixes real and fake statistics within D's batch).
- `lr_d`: D's learning rate when not the G/E one (two-timescale update rule, Heusel et al.
  2017: e.g. D 4e-4, G/E 1e-4).
- `downscale`: 1 trains at full resolution (the paper's half resolution is the default).
- `recon_weight`: adds `recon_weight * MSE(G(E(x)), x)` to the G/E loss (the cycle term of
  ALICE, Li et al. 2017): the plain BiGAN's E only learns through D, which on CPU budgets
  wins too early for E to learn much (shipped: D accuracy ~0.9, G/E loss ~8-10).
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


def _sn_conv(c_in: int, c_out: int) -> nn.Sequential:
    sn = nn.utils.parametrizations.spectral_norm
    return nn.Sequential(sn(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)),
                         nn.LeakyReLU(0.2, inplace=True))  # fmt: skip


class Discriminator(nn.Module):
    def __init__(self, size: int, code_size: int, widths, dropout: float, spectral: bool = False):
        super().__init__()
        side = check_patch(size, len(widths))
        sn = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
        layers, c = [], 3
        for w in widths:
            layers += [_sn_conv(c, w) if spectral else conv_bn_act(c, w), nn.Dropout(dropout)]
            c = w
        self.x_path = nn.Sequential(*layers, nn.Flatten())
        self.z_path = nn.Sequential(
            sn(nn.Linear(code_size, 512)), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)
        )
        self.joint = nn.Sequential(
            sn(nn.Linear(c * side * side + 512, 512)),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout(dropout),
            sn(nn.Linear(512, 1)),
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.x_path(x), self.z_path(z)], 1)).squeeze(1)


class BiGAN(NICMethod):
    data_kind = "images"
    defaults = {"widths": [64, 128, 256], "downscale": 2, "dropout": 0.2, "betas": [0.5, 0.999],
                "spectral_norm": False, "lr_d": None, "recon_weight": 0.0}  # fmt: skip
    training_only = ("D.",)

    def __init__(self, config):
        super().__init__(config)
        o, c = self.opt, config.code_size
        self.size = config.patch_size // o["downscale"]
        self.E = ConvEncoder(self.size, c, o["widths"], dense=None)
        self.G = ConvDecoder(self.size, c, o["widths"], dense=512)
        self.D = Discriminator(self.size, c, o["widths"], o["dropout"], o["spectral_norm"])

    def embedder(self) -> nn.Module:
        return _HalfRes(self.E, self.opt["downscale"])

    def _small(self, x: torch.Tensor) -> torch.Tensor:
        f = self.opt["downscale"]
        return F.avg_pool2d(x, f) if f > 1 else x

    def make_optimizers(self):
        betas = tuple(self.opt["betas"])
        lr = self.config.lr
        lr_d = self.opt["lr_d"] or lr
        ge = list(self.G.parameters()) + list(self.E.parameters())
        return [
            torch.optim.Adam(self.D.parameters(), lr=lr_d, betas=betas),
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
        logs = {"loss_d": loss_d.item(), "loss_ge": loss_ge.item()}
        w = float(self.opt["recon_weight"])
        if w > 0:
            recon = F.mse_loss(self.G(self.E(x)), x)
            loss_ge = loss_ge + w * recon
            logs["recon"] = recon.item()
        optimizer_step(loss_ge, opt_ge)
        return logs

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
