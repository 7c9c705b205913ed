"""The networks bench_speed.py times: dense, ours, uniform width of equal FLOPs, Torch-Pruning.

γ is set as a polarized run leaves it (§3.2, Fig. 2): in each prunable channel space a share of
the channels near 0 (below THRESHOLD in every BN of the space, so the space's BNs agree as after
training), the rest in [0.3, 1]; which channels go is drawn by the seed. The share is found by
bisection so that the pruned network's FLOPs reduction F is near the target.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from pruning.channels import analyse, trace
from pruning.flops import count_flops
from pruning.fold import for_inference
from pruning.layers import PRUNED_LAYERS
from pruning.prunable import prunable_bns
from pruning.surgery import masked, prune

THRESHOLD = 0.1


def spaces_of(model: nn.Module, prunable_set: str = "all") -> list[list[nn.Module]]:
    """The BNs of each prunable channel space (a channel goes only when all of them agree); with
    the authors' set (`pruning.prunable`) only its BNs, the others keep every channel."""
    spaces = analyse(trace(model, leaves=PRUNED_LAYERS))
    bns = [[model.get_submodule(n.target) for n in nodes] for nodes in spaces.bns.values()]
    if prunable_set == "all":
        return bns
    chosen = {id(bn) for bn in prunable_bns(model, prunable_set)}
    return [kept for space in bns if (kept := [bn for bn in space if id(bn) in chosen])]


@torch.no_grad()
def set_gammas_(model: nn.Module, spaces: list[list[nn.Module]], drop: Callable[[int], torch.Tensor],
                seed: int) -> nn.Module:  # fmt: skip
    """γ of every space: near 0 where `drop(width)` is True, else in [0.3, 1]; random β."""
    g = torch.Generator().manual_seed(seed)
    for bns in spaces:
        width = bns[0].num_features
        gone = drop(width)
        for bn in bns:
            kept = 0.3 + 0.7 * torch.rand(width, generator=g)
            bn.weight.copy_(torch.where(gone, 0.02 * torch.rand(width, generator=g), kept))
            bn.bias.copy_(0.1 * torch.randn(width, generator=g))
    return model


def reduction(dense: nn.Module, pruned: nn.Module, shape: tuple[int, ...]) -> float:
    return 1.0 - count_flops(pruned, shape) / count_flops(dense, shape)


def _bisect(make: Callable[[float], nn.Module], dense: nn.Module, target: float, shape: tuple[int, ...],
            low: float, high: float, steps: int) -> nn.Module:  # fmt: skip
    """The model `make(x)` whose F is nearest `target`, x bisected in [low, high] (F grows with x)."""
    best, best_gap = None, float("inf")
    for _ in range(steps):
        middle = (low + high) / 2
        model = make(middle)
        f = reduction(dense, prune(model, THRESHOLD, shape), shape)
        if abs(f - target) < best_gap:
            best, best_gap = model, abs(f - target)
        low, high = (middle, high) if f < target else (low, middle)
    return best


def polarized(
    dense: nn.Module, target: float, seed: int, shape: tuple[int, ...], steps: int = 6, prunable_set: str = "all"
) -> nn.Module:
    """A copy of `dense` with γ as after polarization, a random share of each space near 0, F ≈ target."""
    spaces = spaces_of(dense, prunable_set)

    def make(share: float) -> nn.Module:
        model = copy.deepcopy(dense)
        g = torch.Generator().manual_seed(seed)
        drop = lambda w: torch.rand(w, generator=g) < share  # noqa: E731
        return set_gammas_(model, spaces_of(model, prunable_set), drop, seed)

    assert spaces, "no prunable BN"
    return _bisect(make, dense, target, shape, 0.0, 1.0, steps)


def uniform(dense: nn.Module, target: float, shape: tuple[int, ...], steps: int = 8) -> nn.Module:
    """The uniform-width network of FLOPs reduction ≈ target: each space keeps its first w·C channels
    (the same w everywhere, so a residual stream keeps the same channels in every producer)."""

    def make(share: float) -> nn.Module:
        model = copy.deepcopy(dense)

        def drop(width: int) -> torch.Tensor:
            keep = max(1, round((1 - share) * width))
            return torch.arange(width) >= keep

        return set_gammas_(model, spaces_of(model), drop, 0)

    return prune(_bisect(make, dense, target, shape, 0.0, 1.0, steps), THRESHOLD, shape).eval()


def ours(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    return prune(model, THRESHOLD, shape).eval()


def torch_pruning(model: nn.Module, shape: tuple[int, ...]) -> nn.Module | str:
    """Torch-Pruning's coupled pruning of the same γ: in each dependency group (a channel space, or
    every layer feeding one residual stream) the channels whose |γ| < THRESHOLD in every BN of the
    group, from the masked model. Returns the pruned model, or why it does not apply."""
    try:
        import torch_pruning as tp
    except ImportError:
        return "not installed (pip install -e '.[bench]')"
    pruned = masked(model, THRESHOLD).eval()  # a channel small in only some producers: 0 there
    example = torch.randn(1, *shape)
    try:
        graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=example)
        heads = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1:]
        plans = []
        for group in graph.get_all_groups(ignored_layers=heads, root_module_types=(nn.Conv2d, nn.Linear)):
            gammas = [item.dep.target.module.weight.detach().abs()[item.idxs]
                      for item in group.items if isinstance(item.dep.target.module, nn.BatchNorm2d | nn.BatchNorm1d)
                      ]  # fmt: skip
            if not gammas:
                continue
            small = (torch.stack(gammas).amax(0) < THRESHOLD).nonzero().flatten().tolist()
            root = group.items[0]
            if small and len(small) < len(root.idxs):
                plans.append((root.dep.target.module, root.dep.handler, [root.idxs[i] for i in small]))
        for module, handler, idxs in plans:
            graph.get_pruning_group(module, handler, idxs).prune()
    except Exception as error:  # Torch-Pruning does not handle every graph: say so in the table
        return f"fails: {type(error).__name__}"
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = masked(model, THRESHOLD).eval()(x), pruned(x)
    if got.shape != want.shape or (got - want).abs().max() > 1e-3 * want.abs().max():
        return "not the masked model's function"
    return pruned


def deployed(model: nn.Module) -> nn.Module:
    """The form every variant is timed in, as the final job exports it: eval mode, BN folded into its
    conv, no identity calls, residual additions as plain `index_add_` (`pruning.fold.for_inference`)."""
    return for_inference(model.eval())
