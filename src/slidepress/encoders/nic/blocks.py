"""Building blocks shared by the NIC encoders (Tellez et al., TPAMI 2019, appendix A).

Every NIC network is a stack of strided 3x3 convolutions with batch norm and leaky ReLU; only
the widths, the head and the objective differ between methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_bn_act(c_in: int, c_out: int, stride: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


def upsample_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Nearest-neighbour upsampling + conv: the paper's decoder step (no checkerboard)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv_bn_act(c_in, c_out, 1))


def check_patch(patch_size: int, n_down: int) -> int:
    """Side of the last feature map; the patch must halve cleanly `n_down` times."""
    if patch_size % (2**n_down):
        raise ValueError(f"patch size {patch_size} must be divisible by {2**n_down}")
    return patch_size // 2**n_down


class ConvEncoder(nn.Module):
    """Strided convs -> flatten -> (optional dense) -> linear code of size `code_size`."""

    def __init__(
        self,
        patch_size: int,
        code_size: int,
        widths: Sequence[int],
        dense: int | None = None,
        outputs: int = 1,
    ):
        super().__init__()
        side = check_patch(patch_size, len(widths))
        layers, c = [], 3
        for w in widths:
            layers.append(conv_bn_act(c, w))
            c = w
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = c * side * side
        if dense:
            self.dense = nn.Sequential(
                nn.Linear(flat, dense), nn.BatchNorm1d(dense), nn.LeakyReLU(0.2, inplace=True)
            )
            flat = dense
        else:
            self.dense = nn.Identity()
        # `outputs` > 1 gives several codes from one trunk (the VAE's mu and log-variance)
        self.heads = nn.ModuleList(nn.Linear(flat, code_size) for _ in range(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        h = self.dense(self.features(x))
        out = tuple(head(h) for head in self.heads)
        return out[0] if len(out) == 1 else out


class ConvDecoder(nn.Module):
    """Mirror of `ConvEncoder`: code -> dense -> (upsample + conv) x n -> tanh image."""

    def __init__(
        self,
        patch_size: int,
        code_size: int,
        widths: Sequence[int],
        dense: int = 512,
        full_res_conv: bool = False,
    ):
        """`full_res_conv` adds a conv + BN + LeakyReLU at full resolution after the last
        upsampling (the original decoder maps the 2x nearest-upsampled map straight to RGB
        with one 3x3 conv, so its output is built of 2x2 blocks: a PSNR ceiling)."""
        super().__init__()
        widths = list(widths)[::-1]  # e.g. 512, 256, 128, 64, 32
        self.side = check_patch(patch_size, len(widths))
        self.c0 = widths[0]
        self.dense = nn.Sequential(
            nn.Linear(code_size, dense),
            nn.BatchNorm1d(dense),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(dense, self.c0 * self.side * self.side),
            nn.LeakyReLU(0.2, inplace=True),
        )
        ups = [upsample_conv(a, b) for a, b in zip(widths, widths[1:], strict=False)]
        ups.append(nn.Upsample(scale_factor=2, mode="nearest"))
        if full_res_conv:
            ups.append(conv_bn_act(widths[-1], widths[-1], 1))
        self.body = nn.Sequential(*ups, nn.Conv2d(widths[-1], 3, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dense(z).view(-1, self.c0, self.side, self.side)
        return self.body(h)
