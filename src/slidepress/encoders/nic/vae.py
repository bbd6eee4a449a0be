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
- `feature_net` / `feature_weight` / `feature_layers`: a deep-feature-consistent loss (DFC-VAE,
  Hou et al., WACV 2017): the reconstruction must also match the input in the feature maps
  of a frozen NIC encoder (a shipped name such as `nic-simclr`, a run folder, or `random:SEED`
  for an untrained one, the control that says what the trained features add; its
  `ConvEncoder` blocks `feature_layers`), weighted by `feature_weight`. Pixel MSE alone is
  won by colour fields; feature maps ask for the nuclei and texture. `feature_net_sha256`, when
  set, must match the frozen net's weights hash (the run is refused otherwise), so a config
  names exactly which features it was trained against. `feature_relative` divides each
  layer's error by the target's mean square (scale-free: an untrained net's small activations
  count as much as a trained one's). Only training loads the frozen net.
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
                "kl_warmup": 0.0, "full_res_conv": False, "feature_net": None,
                "feature_weight": 0.0, "feature_layers": [0, 1, 2],
                "feature_net_sha256": None, "feature_relative": False}  # fmt: skip

    def __init__(self, config):
        super().__init__(config)
        p, c, o = config.patch_size, config.code_size, self.opt
        self.encoder = ConvEncoder(p, c, o["widths"], dense=o["dense"], outputs=2)
        self.decoder = ConvDecoder(p, c, o["widths"], dense=o["dense"],
                                   full_res_conv=o["full_res_conv"])  # fmt: skip

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Also resolve the feature net (name, folder, hash) before any data loads."""
        super().check_options(options)
        opt = {**cls.defaults, **options}
        if opt["feature_net"] and float(opt["feature_weight"]) > 0:
            if not opt["feature_layers"]:
                from ...errors import UsageError

                raise UsageError("feature_layers is empty: name the conv blocks to compare")
            load_feature_blocks(opt["feature_net"], opt["feature_net_sha256"])

    def kl_weight(self) -> float:
        """`gamma`, ramped from 0 over the first `kl_warmup` of the budget when training."""
        warm = float(self.opt["kl_warmup"])
        if not self.training or warm <= 0:
            return float(self.opt["gamma"])
        return float(self.opt["gamma"]) * min(1.0, self.progress / warm)

    def embedder(self) -> nn.Module:
        return _Mu(self.encoder)

    def _frozen_features(self) -> nn.Sequential:
        """The frozen feature network's conv blocks, loaded on first use and kept out of this
        module's state (so saved and shipped files hold only the VAE)."""
        net = self.__dict__.get("_features")
        if net is None:
            net = load_feature_blocks(self.opt["feature_net"], self.opt["feature_net_sha256"])
            self.__dict__["_features"] = net
        return net

    def feature_loss(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        blocks = self._frozen_features().to(x.device)
        keep = set(self.opt["feature_layers"])
        if not keep:
            from ...errors import UsageError

            raise UsageError("feature_layers is empty: name the conv blocks to compare")
        rel = bool(self.opt["feature_relative"])
        loss, a, b = recon.new_zeros(()), recon, x
        for i, block in enumerate(blocks):
            a = block(a)
            with torch.no_grad():
                b = block(b)
            if i in keep:
                err = F.mse_loss(a, b)
                loss = loss + (err / b.pow(2).mean().clamp_min(1e-12) if rel else err)
            if i >= max(keep):
                break
        return loss / len(keep)

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        recon = self.decoder(z)
        mse = F.mse_loss(recon, x)
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
        loss = mse + self.kl_weight() * kl
        logs = {"mse": mse.item(), "kl": kl.item()}
        if self.opt["feature_net"] and float(self.opt["feature_weight"]) > 0:
            feat = self.feature_loss(recon, x)
            loss = loss + float(self.opt["feature_weight"]) * feat
            logs["feature"] = feat.item()
        return loss, {"loss": loss.item(), **logs}

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


def load_feature_blocks(source: str, sha256: str | None = None) -> nn.Sequential:
    """The conv blocks of a NIC encoder (shipped name or run folder), frozen in eval mode."""
    from pathlib import Path

    from ... import zoo
    from ...errors import UsageError
    from ..nic_weights import FORMAT, load_method

    if source.startswith("random:"):  # the control: untrained features, seeded
        with torch.random.fork_rng():  # the training's random stream stays untouched
            torch.manual_seed(int(source.partition(":")[2]))
            net = ConvEncoder(64, 1, VAE.defaults["widths"])
    else:
        folder = Path(source)
        if not folder.is_dir():
            folder = zoo.shipped_path(source)
        digest = zoo.weights_sha256(folder, FORMAT)
        if sha256 and digest != sha256:
            raise UsageError(f"feature net {source}: weights sha256 {digest[:12]}..., the config "
                             f"asks for {sha256[:12]}...")  # fmt: skip
        net = load_method(folder)[0].embedder()
        if not isinstance(getattr(net, "features", None), nn.Sequential):
            raise UsageError(f"feature net {source}: its encoder has no conv blocks to compare")
    blocks = nn.Sequential(*[m for m in net.features if not isinstance(m, nn.Flatten)])
    return blocks.eval().requires_grad_(False)
