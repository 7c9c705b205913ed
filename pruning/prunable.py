"""Which BN layers are polarized and pruned (§3.1): found once per model, by one trace.

The regularizer (`pruning.regularizers`), the threshold (`pruning.threshold`) and the surgery
(`pruning.surgery`) all act on the same layers: the BNs of the prunable channel spaces that
`pruning.channels.analyse` finds (a removed channel is exactly 0 wherever it leaves its space).
Finding them traces the whole network with torch.fx, so a caller finds them once per model and
passes the list on:

    bns = prunable_bns(model)                            # prunable_set "all": every such BN
    bns = prunable_bns(model, prunable_set="authors")    # the BNs the authors' code prunes
    gammas = scaling_factors(polarized_bns(model, "authors"))   # the γ of Eq. 2

`prunable_set` (the paper's §3 does not say; the authors' code, github.com/polarizationpruning/
PolarizationPruning, does, per model family):
- "all": every BN after a conv or linear layer whose channels the surgery can remove, the stem and
  the residual-stream BNs included (this project's reading of §3.1).
- "authors": CIFAR ResNet - each BasicBlock's bn1 and bn2, never the stem BN (cifar/models/
  resnet_expand.py, `get_sparse_layers` and `prune_model`: "The first and the last conv layers
  will NOT be pruned"); VGG-16 - every BN, the classifier's BatchNorm1d included (cifar/models/
  vgg.py, `get_sparse_layers`: every VGGBlock); ImageNet ResNet-50 - each Bottleneck's bn1 and bn2
  are polarized, bn1, bn2 and bn3 pruned (bn3 with its own threshold), the downsample BN never
  (imagenet/main.py, the sparsity loss "exclude bn3"; imagenet/models/resnet_expand.py
  `do_pruning`: "do not prune downsample layers"); MobileNet-V2 - each inverted residual's hidden
  (expanded) channels and its output, never the stem or the last 1×1 conv (imagenet/models/
  mobilenet.py, `get_sparse_layers` with gates). The authors put separate gate parameters there;
  we polarize the BN γ of the same channels (both BNs of the hidden channels: they share them).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from pruning.channels import analyse, trace
from pruning.layers import PRUNED_LAYERS

BatchNorm = nn.BatchNorm1d | nn.BatchNorm2d
PRUNABLE_SETS = ("all", "authors")

_BLOCK_BN12 = re.compile(r"^layer\d+\.\d+\.bn[12]$")
_BLOCK_BN123 = re.compile(r"^layer\d+\.\d+\.bn[123]$")


def prunable_bns(model: nn.Module, prunable_set: str = "all") -> list[BatchNorm]:
    """The BN layers whose channels are removed, in graph order; their γ are the scaling factors."""
    spaces = analyse(trace(model, leaves=PRUNED_LAYERS))
    names = [n.target for bn_nodes in spaces.bns.values() for n in bn_nodes]
    if prunable_set != "all":
        pruned, _ = _authors_rules(model, prunable_set)
        names = [name for name in names if pruned(model, name)]
    return [model.get_submodule(name) for name in names]


def polarized_bns(model: nn.Module, prunable_set: str = "all") -> list[BatchNorm]:
    """The BNs the regularizer acts on: the pruned ones, but for the authors' ResNet-50 (not bn3)."""
    bns = prunable_bns(model, prunable_set)
    if prunable_set == "all":
        return bns
    _, polarized = _authors_rules(model, prunable_set)
    names = {id(m): n for n, m in model.named_modules()}
    return [bn for bn in bns if polarized(model, names[id(bn)])]


def scaling_factors(model_or_bns: nn.Module | list[BatchNorm]) -> list[torch.Tensor]:
    """The scaling factors γ (the BN weights, as parameters) of a model's prunable BNs, or of the BNs given."""
    bns = prunable_bns(model_or_bns) if isinstance(model_or_bns, nn.Module) else model_or_bns
    return [bn.weight for bn in bns]


Rule = Callable[[nn.Module, str], bool]


def _cifar_resnet(model: nn.Module, name: str) -> bool:
    return bool(_BLOCK_BN12.match(name))


def _every(model: nn.Module, name: str) -> bool:
    return True


def _bottleneck_pruned(model: nn.Module, name: str) -> bool:
    return bool(_BLOCK_BN123.match(name))


def _mobilenet(model: nn.Module, name: str) -> bool:
    """A BN of an inverted residual: its output BN, and both BNs of its expanded channels if it expands."""
    match = re.match(r"^(features\.\d+)\.conv\.", name)
    if match is None:
        return False
    block = model.get_submodule(match.group(1))
    bns = [f"{match.group(1)}.conv.{n}" for n, m in block.conv.named_modules() if isinstance(m, nn.BatchNorm2d)]
    return name == bns[-1] or len(bns) == 3


# type(model).__name__ -> (is pruned, is polarized), by BN name.
_AUTHORS: dict[str, tuple[Rule, Rule]] = {
    "CifarResNet": (_cifar_resnet, _cifar_resnet),
    "CifarVGG": (_every, _every),
    "ResNet": (_bottleneck_pruned, _cifar_resnet),  # torchvision's: bn3 pruned, not polarized
    "MobileNetV2": (_mobilenet, _mobilenet),
}


def _authors_rules(model: nn.Module, prunable_set: str) -> tuple[Rule, Rule]:
    if prunable_set not in PRUNABLE_SETS:
        raise ValueError(f"prunable_set must be one of {', '.join(PRUNABLE_SETS)}, got {prunable_set!r}")
    family = type(model).__name__
    if family not in _AUTHORS:
        raise ValueError(f"no authors' prunable set for a {family} (known: {', '.join(_AUTHORS)}); use 'all'")
    return _AUTHORS[family]
