"""The model registry: models register themselves by name, `build` is the one door (timm's habit).

    @register("resnet56", input_size=32)
    def resnet56(num_classes: int) -> nn.Module: ...

    model = build("resnet56", num_classes=10)

The networks are those of the paper's experiments (§4): CIFAR ResNet-20/56 and VGG-16, ImageNet
ResNet-50 and MobileNet-V2. Scaling factors keep PyTorch's default γ = 1 here; the trainer sets
them to 0.5 (§3.2) with `pruning.regularizers.init_scaling_factors_` when it polarizes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

ModelFn = Callable[..., nn.Module]  # fn(num_classes) or fn(num_classes, width=1.0)


class UnknownModel(KeyError, ValueError):
    """No model of that name is registered; the message lists the names that are."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


@dataclass(frozen=True)
class _Entry:
    fn: ModelFn
    input_size: int


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, input_size: int = 32) -> Callable[[ModelFn], ModelFn]:
    """Decorator: register `fn(num_classes) -> nn.Module` under `name` for inputs of `input_size`²."""

    def decorate(fn: ModelFn) -> ModelFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = _Entry(fn, int(input_size))
        return fn

    return decorate


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; available: {', '.join(available())}") from None


def build(name: str, num_classes: int, width: float = 1.0) -> nn.Module:
    """A freshly initialised model `name` with `num_classes` outputs; `UnknownModel` if no such name.

    `width` multiplies every layer's channel count (uniform channel scaling, the paper's UCS
    baseline in Table 3); only models whose function takes a `width` argument accept one ≠ 1.
    """
    entry = _entry(name)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if width == 1.0:
        return entry.fn(int(num_classes))
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if "width" not in inspect.signature(entry.fn).parameters:
        raise ValueError(f"model {name!r} has no width multiplier")
    return entry.fn(int(num_classes), width=float(width))


def scaled(channels: int, width: float) -> int:
    """A layer's channel count × width, rounded, at least 1."""
    return max(1, round(channels * width))


def available() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def input_size(name: str) -> int:
    """The side of the square input the model `name` was designed for (32 for CIFAR, 224 for ImageNet)."""
    return _entry(name).input_size


# The model modules register themselves when imported; they import `register` from above.
from trainers.models import cifar_resnet, imagenet, vgg  # noqa: E402, F401
