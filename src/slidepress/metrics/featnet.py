"""The ResNet18 behind the feature-similarity metric, with a width knob and six feature taps.

Layer names follow torchvision's `resnet18` (`conv1`, `bn1`, `layer1.0.conv1`, ...,
`layer4.1.downsample.0`, `fc`), so a torchvision or timm `resnet18` state dict loads as is;
`width` is the stem's channel count (64 in torchvision; the stages have width x 1, 2, 4, 8).
This module imports torch at the top: `featsim` imports it only when a network is built.
"""

from __future__ import annotations

import torch
from torch import nn

from .featsim import DEPTHS  # what `ResNet18.taps` returns, in this order

__all__ = ["DEPTHS", "BasicBlock", "ResNet18", "backbone_keys"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape
    changes), as torchvision's `BasicBlock`."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


class ResNet18(nn.Module):
    """ResNet18 (He et al. 2016), 2 blocks per stage, torchvision's names and layout."""

    def __init__(self, width: int = 64, num_classes: int = 2):
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [width, width * 2, width * 4, width * 8]
        cin = width
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            blocks = nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c, 1))
            setattr(self, f"layer{i + 1}", blocks)
            cin = c
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six feature tensors of DEPTHS for a normalised (N, 3, H, W) batch: the stem
        (conv1 + BN + ReLU, stride 2, before the max-pool), the outputs of the four stages
        (strides 4, 8, 16, 32) and the global average of the last (the classifier's input)."""
        stem = self.relu(self.bn1(self.conv1(x)))
        out = [stem]
        y = self.maxpool(stem)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            y = layer(y)
            out.append(y)
        out.append(self.avgpool(y).flatten(1))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.taps(x)[-1])


def backbone_keys(width: int = 64) -> set[str]:
    """State-dict keys the taps need (everything but the classifier `fc`)."""
    return {k for k in ResNet18(width).state_dict() if not k.startswith("fc.")}
