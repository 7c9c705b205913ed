"""FLOPs of a model: multiply-adds of its conv and linear layers for one input (§3.3, §4).

The convention of the paper and of torchvision's model tables: one multiply-add counts once;
BN, activations, pooling and additions are not counted. The counting itself is torch's
`FlopCounterMode` (which counts 2 FLOPs per multiply-add), restricted to the conv and matmul ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_aten = torch.ops.aten
_MULTIPLY_ADD_OPS = {
    _aten.convolution,
    _aten._convolution,
    _aten.conv1d,
    _aten.conv2d,
    _aten.conv3d,
    _aten.mm,
    _aten.addmm,
    _aten.bmm,
    _aten.baddbmm,
}


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of every conv and linear layer of `model` for one input of shape (C, H, W).

    The model is run once in eval mode (its training flag and BN statistics are left as they were).
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input shape must be positive sizes like (3, 32, 32), got {input_shape}")
    param = next(model.parameters(), None)
    x = torch.zeros((1, *shape), device=param.device if param is not None else "cpu")
    was_training = model.training
    try:
        model.eval()
    except NotImplementedError:  # a torch.export module is fixed in the mode it was exported in
        was_training = None
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"input shape {shape} does not fit the model: {first_line}") from None
    finally:
        if was_training is not None:
            model.train(was_training)
    counts = counter.get_flop_counts().get("Global", {})
    flops = sum(n for op, n in counts.items() if op in _MULTIPLY_ADD_OPS)
    return flops // 2


def flops_reduction(original: nn.Module, pruned: nn.Module, input_shape: Sequence[int]) -> float:
    """F = 1 − FLOPs(pruned) / FLOPs(original), the quantity Algorithm 1 steers."""
    base = count_flops(original, input_shape)
    if base == 0:
        raise ValueError("the original model has no conv or linear FLOPs")
    return 1.0 - count_flops(pruned, input_shape) / base
