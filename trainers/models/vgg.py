"""The CIFAR VGG-16 of Network Slimming (Liu et al., 2017), used in the paper's CIFAR rows (§4.1).

Thirteen 3×3 conv + BN + ReLU layers in the configuration below (M = 2×2 max pool), an average
pool to 1×1, and a classifier Linear(512, 512) + BatchNorm1d + ReLU + Linear(512, classes) as in
the authors' code, so the neurons of the hidden FC layer carry scaling factors and are prunable
too. 313,463,808 multiply-adds at 32×32 (the paper's 313.46M).
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.models import register

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


class CifarVGG(nn.Module):
    """VGG for small images: `cfg` conv widths with "M" max pools, pool to 1×1, BN'd two-layer head."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            width = int(item)
            layers += [
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            in_channels = width
        self.features = nn.Sequential(*layers)
        # 32×32 inputs end at 2×2 (the authors' AvgPool2d(2)), 16×16 inputs at 1×1.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register("vgg16", input_size=32)
def vgg16(num_classes: int) -> nn.Module:
    """VGG-16 for CIFAR (Network Slimming's configuration): 313.46M multiply-adds at 32×32."""
    return CifarVGG(VGG16_CFG, num_classes)
