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
        return full.index_copy(1, self.index, x)

    def extra_repr(self) -> str:
        return f"{self.index.numel()} -> {self.width}"


PRUNED_LAYERS: tuple[type[nn.Module], ...] = (ChannelScatter,)
