"""Heavy patch augmentation (Tellez et al. 2018/2019): geometry, HED stain jitter, colour,
elastic deformation, noise, blur — batched with per-sample parameters (kornia), then the
patch is cropped from the augmented context.

Only the HED jitter is ours: no maintained library ships it batched; it uses scikit-image's
published Ruifrok-Johnston stain matrices.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class HEDJitter(nn.Module):
    """Scale and shift each stain channel (H, E, DAB) per sample in optical-density space."""

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, p: float = 0.8):
        super().__init__()
        from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

        self.register_buffer("to_hed", torch.tensor(hed_from_rgb, dtype=torch.float32))
        self.register_buffer("to_rgb", torch.tensor(rgb_from_hed, dtype=torch.float32))
        self.sigma, self.bias, self.p = sigma, bias, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [0, 1]
        n = x.shape[0]
        od = -torch.log(x.clamp_min(1e-6)).permute(0, 2, 3, 1)  # optical density
        stains = od @ self.to_hed
        alpha = 1 + (torch.rand(n, 1, 1, 3, device=x.device) * 2 - 1) * self.sigma
        beta = (torch.rand(n, 1, 1, 3, device=x.device) * 2 - 1) * self.bias
        on = (torch.rand(n, 1, 1, 1, device=x.device) < self.p).float()
        # the bias is relative to each image's mean stain load, so pale images stay pale
        load = stains.mean(dim=(1, 2), keepdim=True).abs()
        jittered = stains * alpha + beta * load
        stains = on * jittered + (1 - on) * stains
        rgb = torch.exp(-(stains @ self.to_rgb)).permute(0, 3, 1, 2)
        return rgb.clamp(0, 1)


def build_augmentation(strength: float = 1.0) -> nn.Module:
    """The training pipeline on float [0, 1] contexts; `strength` scales the photometric part."""
    import kornia.augmentation as K

    s = strength
    return nn.Sequential(
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
        K.RandomRotation90(times=(0, 3)),
        K.RandomAffine(degrees=20, scale=(0.85, 1.15), padding_mode="reflection", p=0.5),
        K.RandomElasticTransform(kernel_size=(31, 31), sigma=(6.0, 6.0), alpha=(1.0, 1.0), p=0.2),
        HEDJitter(sigma=0.05 * s, bias=0.1 * s, p=0.8),
        K.ColorJitter(0.15 * s, 0.15 * s, 0.15 * s, 0.04 * s, p=0.8),
        K.RandomGaussianBlur((5, 5), (0.1, 1.0), p=0.2),
        K.RandomGaussianNoise(std=0.02 * s, p=0.3),
    )


class PatchAugmenter:
    """uint8 contexts (N, S, S, 3) -> float (N, 3, P, P) in [-1, 1], augmented or not."""

    def __init__(self, patch_size: int, strength: float = 1.0, device: str = "cpu"):
        self.patch_size, self.device = patch_size, device
        self.train_aug = build_augmentation(strength).to(device)

    def _to_tensor(self, contexts: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(contexts)).to(self.device)
        return x.permute(0, 3, 1, 2).float().div_(255.0)

    def _crop(self, x: torch.Tensor, random: bool) -> torch.Tensor:
        p, s = self.patch_size, x.shape[-1]
        if s == p:
            return x
        if not random:
            o = (s - p) // 2
            return x[..., o : o + p, o : o + p]
        # one random offset per sample, within the central 2/3 so rotations never show edges
        lo, hi = (s - p) // 4, s - p - (s - p) // 4
        oy = torch.randint(lo, hi + 1, (x.shape[0],)).tolist()
        ox = torch.randint(lo, hi + 1, (x.shape[0],)).tolist()
        return torch.stack(
            [x[i, :, y : y + p, z : z + p] for i, (y, z) in enumerate(zip(oy, ox, strict=True))]
        )

    @torch.no_grad()
    def __call__(self, contexts: np.ndarray, train: bool) -> torch.Tensor:
        x = self._to_tensor(contexts)
        if train:
            x = self.train_aug(x).clamp_(0, 1)
        x = self._crop(x, random=train)
        return x.mul_(2).sub_(1).contiguous()
