"""The two baselines of the paper's Table 3 (§4.4), chosen to give an asked-for FLOPs reduction.

- Network Slimming (Liu et al., 2017; `baseline: slimming`): L1 on γ (`regularizer: l1`), then
  one global threshold, the percentile of |γ| that prunes a fraction of the channels. Slimming
  asks for a fraction of channels; to compare at equal F we take the smallest fraction whose
  pruned model reaches `baseline_flops` (`slimming_threshold`). The authors' own NS
  implementation does the same percentile over all sparse layers together (imagenet/
  resprune_expand_gate.py, `prune_type == 'ns'`: `sorted(|γ|)[int(n · ratio)]`).
- Uniform channel scaling (`baseline: uniform`): every layer's width × w, trained from scratch
  with the same epochs and no regularizer, never pruned; w is the width whose FLOPs come closest
  to (1 − baseline_flops) of the full network's (`uniform_width`; channel counts are rounded, so
  F is close to, not exactly, the one asked for).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from pruning.flops import count_flops
from pruning.surgery import prune
from pruning.threshold import all_gammas
from trainers import models


def percentile_threshold(gammas: list[torch.Tensor], fraction: float) -> float:
    """The threshold below which `fraction` of all |γ| lie: |γ| sorted, the value at ⌊n·fraction⌋.

    Pruning |γ| < threshold removes exactly ⌊n·fraction⌋ channels when the values are distinct.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    values = all_gammas(gammas).abs().sort().values
    return float(values[int(len(values) * fraction)])


def slimming_threshold(model: nn.Module, bns: list[nn.Module], target: float, input_shape: Sequence[int],
                       original_flops: int) -> tuple[float, float]:  # fmt: skip
    """The smallest percentile threshold of the γ of `bns` whose pruned model has F ≥ `target`,
    and that F (bisection over the sorted |γ|: F grows with the threshold)."""
    gammas = [bn.weight for bn in bns]
    values = all_gammas(gammas).abs().sort().values
    n = len(values)

    def reduction(k: int) -> float:
        pruned = prune(model, {bn: float(values[k]) for bn in bns}, input_shape)
        return 1.0 - count_flops(pruned, input_shape) / original_flops

    low, high = 0, n - 1  # reduction(high) is the most any threshold in the set gives
    if reduction(high) < target:
        return float(values[high]), reduction(high)
    while low < high:
        mid = (low + high) // 2
        if reduction(mid) >= target:
            high = mid
        else:
            low = mid + 1
    return float(values[low]), reduction(low)


@functools.lru_cache(maxsize=64)
def uniform_width(model: str, num_classes: int, input_shape: tuple[int, ...], target: float) -> float:
    """The width multiplier w in [0.05, 1] whose model's FLOPs reduction is closest to `target`."""
    full = count_flops(models.build(model, num_classes), input_shape)

    def reduction(width: float) -> float:
        return 1.0 - count_flops(models.build(model, num_classes, width=width), input_shape) / full

    low, high = 0.05, 1.0  # reduction falls as the width grows
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if reduction(mid) > target else (low, mid)
    return min((low, high), key=lambda w: abs(reduction(w) - target))


def full_width_flops(model: str, num_classes: int, input_shape: Sequence[int]) -> int:
    """FLOPs of the unscaled model: the reference of a uniform baseline's F."""
    return count_flops(models.build(model, num_classes), tuple(input_shape))
