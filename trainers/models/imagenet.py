"""The ImageNet networks of the paper's Table 3 (§4.3), torchvision's implementations, untrained.

ResNet-50 (He et al., 2016): 4,089,184,256 multiply-adds at 224×224; MobileNet-V2 (Sandler et
al., 2018): 300,774,272. torchvision already initialises convolutions with He's method.
"""

from __future__ import annotations

from torch import nn
from torchvision import models

from trainers.models import register


@register("resnet50", input_size=224)
def resnet50(num_classes: int) -> nn.Module:
    """torchvision's ResNet-50, no pretrained weights."""
    return models.resnet50(weights=None, num_classes=num_classes)


@register("mobilenet_v2", input_size=224)
def mobilenet_v2(num_classes: int, width: float = 1.0) -> nn.Module:
    """torchvision's MobileNet-V2, no pretrained weights; `width` is its width multiplier (channels
    rounded to multiples of 8, the last 1280 never below 1280). ResNet-50 has none: torchvision's
    `width_per_group` scales only the bottlenecks' inner width."""
    return models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width)
