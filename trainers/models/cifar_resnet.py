"""CIFAR ResNets of He et al. (2016), §4.2: the networks of the paper's CIFAR rows (§4.1).

Three stages of 16, 32 and 64 channels, n BasicBlocks each (depth 6n + 2), and the
parameter-free "option A" shortcut: where a block halves the resolution and doubles the width,
the identity is subsampled by the stride and zero-padded with the missing channels. Conv +
linear multiply-adds at 32×32: 40,551,040 (ResNet-20) and 125,485,696 (ResNet-56, the paper's
125.49M). An adaptive average pool ends the network, so it also runs on 16×16 inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.models import register, scaled


class ZeroPadShortcut(nn.Module):
    """Option A: subsample the identity by `stride` and zero-pad it to `out_channels` (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """Two 3×3 conv + BN layers with a residual connection: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 images: conv 16 → 3 stages of n blocks (16, 32, 64) → pool → linear;
    every width × `width` (uniform channel scaling)."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_channels = [], widths[0]
        for index, width in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        _kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _kaiming_init_(model: nn.Module) -> None:
    """He initialisation for convolutions (fan-out, ReLU); BN and linear keep PyTorch's defaults."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@register("resnet20", input_size=32)
def resnet20(num_classes: int, width: float = 1.0) -> nn.Module:
    """ResNet-20 (n = 3): 40.55M multiply-adds at 32×32 (width 1)."""
    return CifarResNet(3, num_classes, width)


@register("resnet56", input_size=32)
def resnet56(num_classes: int, width: float = 1.0) -> nn.Module:
    """ResNet-56 (n = 9), the paper's CIFAR ResNet: 125.49M multiply-adds at 32×32 (Table 1, width 1)."""
    return CifarResNet(9, num_classes, width)
