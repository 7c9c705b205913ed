"""The CIFAR VGG-16 of Network Slimming (Liu et al., 2017), used in the paper's CIFAR rows (§4.1).

Thirteen 3×3 conv + BN + ReLU layers in the configuration below (M = 2×2 max pool), an average
pool to 1×1, and a classifier Linear(512, 512) + BatchNorm1d + ReLU + Linear(512, classes) as in
the authors' code, so the neurons of the hidden FC layer carry scaling factors and are prunable
too. 313,463,808 multiply-adds at 32×32 (the paper's 313.46M).
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.models import register, scaled

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


class CifarVGG(nn.Module):
    """VGG for small images: `cfg` conv widths with "M" max pools, pool to 1×1, BN'd two-layer head."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            channels = scaled(int(item), width)
            layers += [
                nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = channels
        self.features = nn.Sequential(*layers)
        # 32×32 inputs end at 2×2 (the authors' AvgPool2d(2)), 16×16 inputs at 1×1.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = scaled(512, width)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register("vgg16", input_size=32)
def vgg16(num_classes: int, width: float = 1.0) -> nn.Module:
    """VGG-16 for CIFAR (Network Slimming's configuration): 313.46M multiply-adds at 32×32 (width 1)."""
    return CifarVGG(VGG16_CFG, num_classes, width)
