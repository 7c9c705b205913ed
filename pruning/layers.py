"""The layers a pruned model is made of, beside the original model's own (§4.2).

Tracing keeps them whole (`PRUNED_LAYERS`), so that a pruned model can be analysed and pruned again.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelScatter(nn.Module):
    """Zero-pads a tensor holding channels `index` of a `width`-channel tensor back to full width."""

    def __init__(self, index: torch.Tensor, width: int) -> None:
        super().__init__()
        self.width = width
        self.register_buffer("index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = x.new_zeros((x.shape[0], self.width, *x.shape[2:]))
        return full.index_copy_(1, self.index, x)  # in place into the fresh zeros: no copy of them

    def extra_repr(self) -> str:
        return f"{self.index.numel()} -> {self.width}"



class ChannelAdd(nn.Module):
    """`base` plus `other` at channels `index` of `base` (a residual addition of compact tensors).

    With `in_place`, when no gradient is recorded, `other` is added into `base` itself: the surgery
    sets it only where nothing reads `base` afterwards, and it saves the copy of the stream that an
    out-of-place add makes (bench/bench_speed.py).
    """

    def __init__(self, index: torch.Tensor, in_place: bool = False) -> None:
        super().__init__()
        self.in_place = in_place
        self.register_buffer("index", index)

    def forward(self, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        recorded = torch.is_grad_enabled() and (base.requires_grad or other.requires_grad)
        if self.in_place and not recorded:
            return base.index_add_(1, self.index, other)
        return base.index_add(1, self.index, other)

    def extra_repr(self) -> str:
        return f"{self.index.numel()} channels{', in place' if self.in_place else ''}"


PRUNED_LAYERS: tuple[type[nn.Module], ...] = (ChannelScatter, ChannelAdd)
