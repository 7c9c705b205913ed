"""Channel surgery: remove the channels whose scaling factor |γ| is below the threshold (§3.3, §4.2).

`threshold` is one number for every prunable BN or a threshold per BN (per-layer thresholds,
`pruning.threshold`; a prunable set smaller than all, `pruning.prunable`).
`masked(model, threshold)` is the reference: γ and β of those channels set to 0, so in eval mode
each is exactly 0 after its BN. `prune` returns a new, smaller dense model (a torch.fx
GraphModule whose layers keep their names) that computes the same function without them.

How. `pruning.channels` traces the model with torch.fx and finds its *channel spaces*: the output
of a conv or linear layer (groups 1) with the ops that keep its channels one to one. A space is
prunable when it holds a BN and every value leaving it has passed one, so a removed channel is
exactly 0 wherever it leaves; its BNs are the prunable BNs, and a channel goes only when every BN
of the space agrees (MobileNet-V2's expanded channels are shared by two). `pruning.rebuild` then
writes the new graph op by op, computing only the kept channels (residual streams included: see
there). A branch that loses every channel becomes the constant its later BNs still add, folded at
prune time; when a constant needs a shape after all, its spaces keep one channel and the graph is
written again. Torch-Pruning's DependencyGraph is not used: it couples every layer feeding a
residual addition into one group (a stream channel goes from every producer or from none), which
is not the paper's scheme, and this way the core stays torch only.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import fx, nn

from pruning.channels import analyse, propagate_shapes, trace
from pruning.layers import PRUNED_LAYERS
from pruning.prunable import prunable_bns
from pruning.rebuild import Builder, Revive

# One threshold for every prunable BN, or one per BN: {BN module or its name: threshold}, where
# a prunable BN not in the mapping keeps all its channels (per-layer thresholds, the authors' set).
Threshold = float | Mapping[nn.Module | str, float]


def masked(model: nn.Module, threshold: Threshold) -> nn.Module:
    """A deep copy with γ and β of every prunable channel with |γ| < its BN's threshold set to 0."""
    of = _thresholds(model, threshold)
    reference = copy.deepcopy(model)
    names = {id(m): n for n, m in reference.named_modules()}
    _mask_({bn: of(names[id(bn)]) for bn in prunable_bns(reference)})
    return reference


def prune(model: nn.Module, threshold: Threshold, input_shape: Sequence[int]) -> nn.Module:
    """A new, smaller dense model without the channels whose |γ| < threshold (input untouched).

    `threshold` is one number, or a threshold per BN (see `Threshold`). In eval mode the output
    equals `masked(model, threshold)`'s. `input_shape` is (C, H, W) of one input; the shapes it
    gives fix how a flatten before a linear layer maps channels to features.
    """
    of = _thresholds(model, threshold)
    reference = copy.deepcopy(model).eval()
    traced = _trace(reference)
    spaces = analyse(traced)
    propagate_shapes(traced, input_shape)
    strongest = {
        root: torch.stack([traced.get_submodule(n.target).weight.detach().abs() for n in bn_nodes]).amax(0)
        for root, bn_nodes in spaces.bns.items()
    }
    # A channel stays when some BN of its space keeps it.
    keeps = {
        root: torch.stack([traced.get_submodule(n.target).weight.detach().abs() >= of(n.target)
                           for n in bn_nodes]).any(0)
        for root, bn_nodes in spaces.bns.items()
    }  # fmt: skip
    _mask_({traced.get_submodule(n.target): of(n.target) for bn_nodes in spaces.bns.values() for n in bn_nodes})
    forced: set[fx.Node] = set()
    while True:
        kept = {root: _kept(keeps[root], gammas, root in forced) for root, gammas in strongest.items()}
        try:
            pruned = Builder(traced, spaces, kept).build(type(model).__name__)
        except Revive as revive:
            if revive.origin <= forced:
                raise RuntimeError("surgery failed to give a constant branch a shape") from None
            forced |= revive.origin
            continue
        return pruned.train(model.training)


def _check_threshold(threshold: float) -> None:
    if not isinstance(threshold, numbers.Real) or math.isnan(threshold) or threshold < 0:
        raise ValueError(f"pruning threshold must be a number >= 0, got {threshold!r}")


def _thresholds(model: nn.Module, threshold: Threshold) -> Callable[[str], float]:
    """The threshold of a BN by its name in `model` (0, keep all, for one a mapping leaves out)."""
    if not isinstance(threshold, Mapping):
        _check_threshold(threshold)
        return lambda name: threshold
    names = {id(m): n for n, m in model.named_modules()}
    table: dict[str, float] = {}
    for key, value in threshold.items():
        name = key if isinstance(key, str) else names.get(id(key))
        if name is None or not isinstance(model.get_submodule(name), nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"pruning threshold given for {key!r}, which is not a BN layer of the model")
        _check_threshold(value)
        table[name] = value
    return lambda name: table.get(name, 0.0)


def _mask_(thresholds: dict[nn.Module, float]) -> None:
    with torch.no_grad():
        for bn, threshold in thresholds.items():
            small = bn.weight.abs() < threshold
            bn.weight[small] = 0.0
            bn.bias[small] = 0.0


def _kept(keep: torch.Tensor, strongest: torch.Tensor, forced: bool) -> torch.Tensor | None:
    """Channels some BN of the space keeps; one (the strongest) if `forced` and none is left."""
    keep = torch.nonzero(keep).flatten().cpu()
    if keep.numel() == 0 and forced:
        keep = strongest.argmax().view(1).cpu()
    return None if keep.numel() == strongest.numel() else keep


def _trace(model: nn.Module) -> fx.GraphModule:
    """The traced model, with `ChannelScatter` kept whole so that a pruned model can be pruned again."""
    return trace(model, leaves=PRUNED_LAYERS)


