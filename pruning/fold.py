"""BN folded into the conv or linear layer before it, for inference (an exported pruned model, §4.2).

In eval mode BN is the affine map y = γ·(x − μ)/√(σ² + ε) + β per channel; after a conv or linear
layer whose output only it reads, it folds into that layer's weights and bias:
W' = W·s, b' = (b − μ)·s + β with s = γ/√(σ² + ε). On CPU a BN is a pass over memory as long as a
ReLU; at the widths of a pruned CIFAR ResNet that is several per cent of the time
(bench/bench_speed.py). The folded model computes the same function in eval mode only: it has no
BN left to train.

`for_inference` is the form a network is deployed and timed in (the final job's export and
latency, bench/bench_speed.py), dense and pruned alike: BN folded, and the calls that cost Python
time per op at batch 1 and compute nothing (identity shortcuts, dropout in eval mode) removed, and
a pruned model's residual additions called as `index_add_` directly (`ChannelAdd` checks autograd
on every call; an inference graph has none).
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from pruning.channels import trace
from pruning.layers import PRUNED_LAYERS, ChannelAdd

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NO_OPS_IN_EVAL = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def for_inference(model: nn.Module) -> fx.GraphModule:
    """`fold_bn(model)` without the calls that compute nothing in eval mode, and with `ChannelAdd`
    as a plain `index_add_` (out of place where the surgery found the operand read again)."""
    traced = fold_bn(model)
    for node in list(traced.graph.nodes):
        if node.op != "call_module":
            continue
        layer = traced.get_submodule(node.target)
        if isinstance(layer, _NO_OPS_IN_EVAL) and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            traced.graph.erase_node(node)
        elif isinstance(layer, ChannelAdd):
            name, n = node.target.replace(".", "_") + "_index", 0
            while hasattr(traced, name):
                name, n = f"{node.target.replace('.', '_')}_index_{n}", n + 1
            traced.register_buffer(name, layer.index)
            with traced.graph.inserting_before(node):
                index = traced.graph.get_attr(name)
                method = "index_add_" if layer.in_place else "index_add"
                add = traced.graph.call_method(method, (node.args[0], 1, index, node.args[1]))
            node.replace_all_uses_with(add)
            traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced.eval().requires_grad_(False)  # in-place additions: not a graph to train


def fold_bn(model: nn.Module) -> fx.GraphModule:
    """A copy of `model` in eval mode with every BN that directly follows a conv or linear layer
    (the layer's only reader, each called once) folded into that layer; other BNs stay."""
    traced = trace(copy.deepcopy(model).eval(), leaves=PRUNED_LAYERS)
    calls: dict[str, int] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        bn = traced.get_submodule(node.target)
        source = node.args[0] if node.args else None
        if not isinstance(bn, _NORMS) or not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        layer = traced.get_submodule(source.target)
        if not isinstance(layer, _FOLDABLE) or calls[source.target] != 1 or len(source.users) != 1:
            continue
        if bn.running_mean is None or len(node.args) != 1 or node.kwargs:
            continue  # batch statistics at inference: nothing fixed to fold
        _fold_into_(layer, bn)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


@torch.no_grad()
def _fold_into_(layer: nn.Module, bn: nn.Module) -> None:
    """W ← W·s, b ← (b − μ)·s + β, s = γ/√(σ² + ε), in float64 so that folding adds no rounding of its own."""
    weight = layer.weight.double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.double()
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale + (bn.bias.double() if bn.affine else 0.0)
    shape = (-1, *[1] * (weight.dim() - 1))
    layer.weight = nn.Parameter((weight * scale.reshape(shape)).to(layer.weight.dtype), requires_grad=False)
    layer.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=False)
