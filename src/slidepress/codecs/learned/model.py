"""The learned tile codec as a torch model, for training (inference uses `exact.py`).

A mean-scale hyperprior with a shallow synthesis (Minnen et al. 2018; Yang & Mandt 2023,
"Computationally-efficient neural image compression with shallow decoders"): a full analysis
transform (4 convolutions with GDN) maps a tile to latents at 1/8 resolution (96 channels);
a 2-layer transposed-convolution synthesis with ReLU maps them back (1/16 latents with a
3-layer synthesis are the other option). Why 1/8: H&E at 0.25-1 um/px is mostly fine texture,
coded at 1-5 bpp; with 1/16 latents the trained transform topped out at 23 dB on validation
crops at every rate level (more bits bought nothing), while 1/8 passed that in 2,000 steps
and kept improving with the level. The synthesis and the
hyper-synthesis use only operations that `exact.py` reproduces in exact integer arithmetic
(transposed convolutions, 1x1 convolutions, ReLU), so decoding is bit-identical everywhere.

Variable rate from one model: per-level gain vectors on the latents (Cui et al. 2021,
"Asymmetric gained deep image compression"); level k is trained with lambda_k.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights_folder import CodecConfig  # the architecture, as config.json records it

LOG_SCALE_MIN = math.log(0.11)  # smallest latent scale the entropy tables cover
LOG_SCALE_MAX = math.log(80.0)
# H&E pixels in [0, 1] sit around 0.6: centring and widening them makes training converge
# several times faster (measured: an autoencoder stuck at 15 dB for 600 steps reaches 18 dB).
PIXEL_CENTRE, PIXEL_SPREAD = 0.6, 4.0


class GDN(nn.Module):
    """Generalised divisive normalisation (Balle et al. 2016), analysis side only.

    gamma and beta are stored as square roots (non-negative by construction); the small
    off-diagonal start keeps their gradients non-zero (abs() at exactly 0 would freeze them)."""

    def __init__(self, channels: int):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter((0.1 * torch.eye(channels) + 1e-4).sqrt())

    def forward(self, x: Tensor) -> Tensor:
        beta = self.beta**2 + 1e-6
        gamma = self.gamma**2
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * torch.rsqrt(norm)


class Affine(nn.Module):
    """A fixed x * scale + shift (no parameters): pixel centring on both sides."""

    def __init__(self, scale: float, shift: float):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def tconv(cin: int, cout: int, k: int, s: int) -> nn.ConvTranspose2d:
    """Transposed convolution whose output is exactly `s` times its input (k - s even)."""
    return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=(k - s) // 2)


class CodecNet(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        n, m, z, h = cfg.n, cfg.m, cfg.z, cfg.hyper
        if cfg.latent_stride not in (8, 16):
            raise ValueError(f"latent_stride must be 8 or 16, got {cfg.latent_stride}")
        if len(cfg.synthesis) != {16: 2, 8: 1}[cfg.latent_stride]:
            raise ValueError("synthesis needs one hidden width per 2x step above the last 4x")
        last = 2 if cfg.latent_stride == 16 else 1  # stride of the analysis' last convolution
        self.analysis = nn.Sequential(
            Affine(PIXEL_SPREAD, -PIXEL_CENTRE * PIXEL_SPREAD),
            nn.Conv2d(3, 64, 5, 2, 2), GDN(64),
            nn.Conv2d(64, n, 3, 2, 1), GDN(n),
            nn.Conv2d(n, n, 3, 2, 1), GDN(n),
            nn.Conv2d(n, m, 3, last, 1),
        )  # fmt: skip
        layers: list[nn.Module] = []
        cin = m
        for width in cfg.synthesis:
            layers += [tconv(cin, width, 4, 2), nn.ReLU()]
            cin = width
        self.synthesis = nn.Sequential(
            *layers,
            tconv(cin, 3, 8, 4),
            Affine(1 / PIXEL_SPREAD, PIXEL_CENTRE),  # folded into the last layer at export
        )
        up = 32 // cfg.latent_stride  # hyper-latents -> latents
        self.hyper_analysis = nn.Sequential(
            nn.Conv2d(m, h, 3, 1, 1), nn.LeakyReLU(0.1),
            *([nn.Conv2d(h, h, 3, 2, 1), nn.LeakyReLU(0.1)] if up == 4 else []),
            nn.Conv2d(h, z, 5, 2, 2),
        )  # fmt: skip
        self.hyper_synthesis = nn.Sequential(
            tconv(z, h, 2 * up, up), nn.ReLU(),
            nn.Conv2d(h, h, 1), nn.ReLU(),
            nn.Conv2d(h, 2 * m, 1),
        )  # fmt: skip
        # per-level gains (log domain), initialised so higher levels quantise more finely
        levels = cfg.levels
        init = torch.linspace(0.0, 2.5, levels)[:, None].repeat(1, m)
        self.log_gain = nn.Parameter(init)
        self.z_log_scale = nn.Parameter(torch.zeros(z))

    # -- pieces ------------------------------------------------------------------------------
    def gain(self, level: Tensor) -> Tensor:
        """(B, M, 1, 1) gains for integer levels (B,)."""
        return self.log_gain[level].exp()[:, :, None, None]

    def entropy_params(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        out = self.hyper_synthesis(z_hat)
        mu, log_scale = out.chunk(2, dim=1)
        return mu, log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)

    def forward(self, x: Tensor, level: Tensor) -> dict[str, Tensor]:
        """x in [0, 1], (B, 3, H, W) with H, W multiples of 32; level (B,) ints."""
        g = self.gain(level)
        y = self.analysis(x) * g
        z = self.hyper_analysis(y)
        z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        z_hat = z + (torch.round(z) - z).detach()
        mu, log_scale = self.entropy_params(z_hat)
        scale = log_scale.exp()
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        y_hat = mu + (torch.round(y - mu) - (y - mu)).detach() + (y - mu)  # STE rounding
        x_hat = self.synthesis(y_hat / g)
        bits_y = gaussian_bits(y_noisy, mu, scale)
        zs = self.z_log_scale.exp()[None, :, None, None]
        bits_z = gaussian_bits(z_noisy, torch.zeros_like(z_noisy), zs.expand_as(z_noisy))
        return {"x_hat": x_hat, "bits": bits_y + bits_z, "bits_y": bits_y, "bits_z": bits_z}


def gaussian_bits(v: Tensor, mu: Tensor, scale: Tensor) -> Tensor:
    """Bits of each element of `v` under N(mu, scale) integrated over a unit bin, summed per
    sample: (B,)."""
    d = (v - mu).abs()
    upper = _std_cdf((0.5 - d) / scale)
    lower = _std_cdf((-0.5 - d) / scale)
    p = (upper - lower).clamp_min(1e-9)
    return -(torch.log2(p)).flatten(1).sum(1)


def _std_cdf(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-x * (2**-0.5))
