"""Which channels a trained model loses, by the config: the threshold and the F it gives (§3.3).

    choice = choose(model, bns, config, input_shape, original_flops)
    choice.threshold, choice.flops_reduction, choice.summary    # summary: one number, for reports

- The paper's method (`baseline: none`): the first valley of the |γ| histogram (§3.3) of the BNs
  of `prunable_set`, one histogram for all of them (`threshold_scope: global`) or one per BN
  (`per_layer`, the authors' code: cifar/models/common.py `search_threshold`, called per layer).
  A layer without a valley keeps all its channels; no valley at all gives F = 0.
- Network Slimming (`baseline: slimming`): the global percentile threshold whose pruned model
  reaches `baseline_flops` (`trainers.baselines.slimming_threshold`).
- Uniform width (`baseline: uniform`): nothing is pruned; F is the narrower model's FLOPs against
  the full-width model's (`original_flops`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pruning.flops import count_flops
from pruning.surgery import Threshold, prune
from pruning.threshold import all_gammas, first_valley, per_layer_thresholds
from trainers.baselines import full_width_flops, slimming_threshold
from trainers.config import Config


@dataclass(frozen=True)
class Choice:
    """A pruning decision: `threshold` for `pruning.surgery.prune` (None: prune nothing)."""

    threshold: Threshold | None
    flops_reduction: float
    below: float  # the fraction of the prunable γ below their threshold

    @property
    def summary(self) -> float | None:
        """The threshold as one number: itself, or the median of the per-layer thresholds."""
        if isinstance(self.threshold, dict):
            return statistics.median(self.threshold.values()) if self.threshold else None
        return self.threshold


def pruning_threshold(bns_or_gammas: Sequence[nn.Module] | Sequence[torch.Tensor], config: Config) -> Threshold | None:
    """§3.3's first valley: one number (global scope), or {BN: threshold} for the BNs with a valley
    (per_layer scope, which needs the BN modules); None when there is no valley at all."""
    gammas = [b.weight if isinstance(b, nn.Module) else b for b in bns_or_gammas]
    if config.threshold_scope == "global":
        return first_valley(all_gammas(gammas), config.bin_width, config.gamma_upper)
    if not all(isinstance(b, nn.Module) for b in bns_or_gammas):
        raise ValueError("per-layer thresholds need the BN layers, not only their γ")
    valleys = per_layer_thresholds(gammas, config.bin_width, config.gamma_upper)
    chosen = {bn: v for bn, v in zip(bns_or_gammas, valleys, strict=True) if v is not None}
    return chosen or None


def choose(model: nn.Module, bns: list[nn.Module], config: Config, input_shape: Sequence[int],
           original_flops: int) -> Choice:  # fmt: skip
    """The threshold of `config`'s rule over the prunable `bns` and the F of the pruned model."""
    if config.baseline == "uniform":
        return Choice(None, 1.0 - count_flops(model, input_shape) / original_flops, 0.0)
    if config.baseline == "slimming":
        value, flops_reduction = slimming_threshold(model, bns, config.baseline_flops, input_shape, original_flops)
        return Choice({bn: value for bn in bns}, flops_reduction, _below(bns, {bn: value for bn in bns}))
    threshold = pruning_threshold(bns, config)
    if threshold is None:
        return Choice(None, 0.0, 0.0)
    per_bn = threshold if isinstance(threshold, dict) else {bn: threshold for bn in bns}
    pruned = prune(model, per_bn, input_shape)
    return Choice(threshold, 1.0 - count_flops(pruned, input_shape) / original_flops, _below(bns, per_bn))


def reference_flops(config: Config, model: nn.Module, input_shape: Sequence[int], num_classes: int) -> int:
    """FLOPs F is measured against: the model's, or the full-width model's for a uniform baseline."""
    if config.baseline == "uniform":
        return full_width_flops(config.model, config.num_classes or num_classes, input_shape)
    return count_flops(model, tuple(input_shape))


def _below(bns: list[nn.Module], per_bn: dict[nn.Module, float]) -> float:
    below = sum(int((bn.weight.detach().abs() < per_bn.get(bn, 0.0)).sum()) for bn in bns)
    return below / sum(bn.weight.numel() for bn in bns)
