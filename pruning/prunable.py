"""Which BN layers are polarized and pruned (§3.1): found once per model, by one trace.

The regularizer (`pruning.regularizers`), the threshold (`pruning.threshold`) and the surgery
(`pruning.surgery`) all act on the same layers: the BNs of the prunable channel spaces that
`pruning.channels.analyse` finds (a removed channel is exactly 0 wherever it leaves its space).
Finding them traces the whole network with torch.fx, so a caller finds them once per model and
passes the list on:

    bns = prunable_bns(model)
    gammas = scaling_factors(bns)          # the γ of Eq. 2, as the model's own parameters
"""

from __future__ import annotations

import torch
from torch import nn

from pruning.channels import analyse, trace
from pruning.layers import PRUNED_LAYERS

BatchNorm = nn.BatchNorm1d | nn.BatchNorm2d


def prunable_bns(model: nn.Module) -> list[BatchNorm]:
    """The BN layers whose channels can be removed, in graph order; their γ are the scaling factors."""
    spaces = analyse(trace(model, leaves=PRUNED_LAYERS))
    return [model.get_submodule(n.target) for bn_nodes in spaces.bns.values() for n in bn_nodes]


def scaling_factors(model_or_bns: nn.Module | list[BatchNorm]) -> list[torch.Tensor]:
    """The scaling factors γ (the BN weights, as parameters) of a model's prunable BNs, or of the BNs given."""
    bns = prunable_bns(model_or_bns) if isinstance(model_or_bns, nn.Module) else model_or_bns
    return [bn.weight for bn in bns]
