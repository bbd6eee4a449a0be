"""Slide-level models trained on NIC embedding grids (registered in `slidemodel.SLIDE_MODELS`).

A grid is one slide compressed by a NIC encoder: a (C, H, W) tensor, one C-dim code per patch,
all-zero on background, with a boolean tissue mask (H, W). Two models are provided:

- ``"nic-cnn"``: the second-stage CNN of Neural Image Compression (Tellez, Litjens, van der Laak
  and Ciompi, "Neural Image Compression for Gigapixel Histopathology Image Analysis", TPAMI
  2019; Tellez et al., "Extending unsupervised neural image compression with supervised
  multitask learning", MIDL 2020).
- ``"abmil"``: gated attention-based multiple-instance learning over the grid cells (Ilse,
  Tomczak and Welling, "Attention-based Deep Multiple Instance Learning", ICML 2018), a strong
  baseline that ignores the spatial arrangement of the cells.

Every model maps ``(x (N, C, H, W), mask (N, H, W) | None) -> (N, n_outputs)`` and exposes
``cam_layer``, the module whose (N, K, h, w) output Grad-CAM explains (`gradcam.grad_cam`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


def tissue_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """The (N, H, W) bool mask to use: `mask` if given, else the non-zero cells of `x`."""
    if mask is None:
        return x.abs().sum(dim=1) > 0
    mask = mask.to(device=x.device, dtype=torch.bool)
    if mask.dim() == 2:
        mask = mask.unsqueeze(0).expand(x.shape[0], -1, -1)
    if mask.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match grid {tuple(x.shape)}")
    return mask


class SeparableBlock(nn.Module):
    """Depthwise 3x3 conv -> pointwise 1x1 conv -> BatchNorm -> LeakyReLU -> Dropout2d."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float, slope: float = 0.2):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.LeakyReLU(slope)
        # feature-wise dropout: drops whole channels, since neighbouring cells are correlated
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.act(self.bn(self.pointwise(self.depthwise(x)))))


class NICCNN(nn.Module):
    """The NIC slide-level CNN (Tellez et al., TPAMI 2019, section 3.3).

    `n_layers` depthwise-separable 3x3 conv blocks of `width` filters (BatchNorm, LeakyReLU,
    feature-wise dropout), stride 2 except in the last two blocks, then global pooling over
    space, a dense layer of 128 units (BatchNorm, LeakyReLU) and a linear output layer.

    Global pooling instead of flattening makes the network independent of the grid size, so it
    can be trained on (padded) crops and still take whole grids of any size at test time.
    ``pool="max"`` (default) keeps small lesions from being averaged away; ``"avg"`` suits
    diffuse properties. The paper's L2 penalty (``l2 = 1e-5``) is not applied here: the
    training code passes it to the optimiser as ``weight_decay``.

    In training mode BatchNorm needs more than one value per channel: batches of one grid
    only work in eval mode (the dense layer sees one value per unit).

    ``cam_layer`` is the first block: Grad-CAM on it has the finest resolution (H/2, W/2),
    as in the paper.
    """

    name: ClassVar[str] = "nic-cnn"
    l2: ClassVar[float] = 1e-5

    def __init__(
        self,
        in_channels: int,
        n_outputs: int,
        width: int = 128,
        n_layers: int = 8,
        dropout: float = 0.2,
        pool: str = "max",
    ):
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', not {pool!r}")
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        self.in_channels, self.n_outputs, self.pool = in_channels, n_outputs, pool
        blocks = []
        for i in range(n_layers):
            stride = 1 if i >= n_layers - 2 else 2
            blocks.append(SeparableBlock(in_channels if i == 0 else width, width, stride, dropout))
        self.blocks = nn.Sequential(*blocks)
        self.dense = nn.Sequential(nn.Linear(width, 128), nn.BatchNorm1d(128), nn.LeakyReLU(0.2))
        self.head = nn.Linear(128, n_outputs)

    @property
    def cam_layer(self) -> nn.Module:
        return self.blocks[0]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        # background cells are zero already; the mask only enforces it for unclean inputs
        if mask is not None:
            x = x * tissue_mask(x, mask).unsqueeze(1).to(x.dtype)
        f = self.blocks(x)
        f = f.amax(dim=(2, 3)) if self.pool == "max" else f.mean(dim=(2, 3))
        return self.head(self.dense(f))


class ABMIL(nn.Module):
    """Gated attention MIL over grid cells (Ilse et al., ICML 2018, eq. 9).

    Each cell's code is projected (1x1 conv = per-cell linear layer, ReLU, dropout); a gated
    attention score ``w^T (tanh(V h) * sigmoid(U h))`` is softmax-normalised over the tissue
    cells only (background never dilutes the bag; a slide without tissue falls back to all
    cells) and the attention-weighted mean of the cells is classified by a linear layer.

    The projection is a 1x1 conv so that ``cam_layer`` yields (N, hidden, H, W) maps at full
    grid resolution for Grad-CAM. ``last_attention`` holds the attention of the last forward
    pass, (N, H, W), zero outside the mask (detached).
    """

    name: ClassVar[str] = "abmil"

    def __init__(
        self,
        in_channels: int,
        n_outputs: int,
        hidden: int = 128,
        attention: int = 128,
        dropout: float = 0.25,
    ):
        super().__init__()
        self.in_channels, self.n_outputs = in_channels, n_outputs
        self.project = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.attn_v = nn.Linear(hidden, attention)
        self.attn_u = nn.Linear(hidden, attention)
        self.attn_w = nn.Linear(attention, 1)
        self.head = nn.Linear(hidden, n_outputs)
        self.last_attention: Tensor | None = None

    @property
    def cam_layer(self) -> nn.Module:
        return self.project

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        n, _, h, w = x.shape
        m = tissue_mask(x, mask).reshape(n, h * w)
        m = m | ~m.any(dim=1, keepdim=True)  # no tissue at all: attend over every cell
        cells = self.drop(self.project(x).flatten(2).transpose(1, 2))  # (N, HW, hidden)
        logits = self.attn_w(torch.tanh(self.attn_v(cells)) * torch.sigmoid(self.attn_u(cells)))
        a = torch.softmax(logits.squeeze(2).masked_fill(~m, float("-inf")), dim=1)  # (N, HW)
        self.last_attention = a.detach().reshape(n, h, w)
        return self.head(torch.bmm(a.unsqueeze(1), cells).squeeze(1))
