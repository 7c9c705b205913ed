"""Residual streams kept compact: additions, subsamples and channel padding of compact tensors (§4.2).

The paper zero-pads the output of a residual block's last conv back to full width before the
addition (after He et al., 2019). Measured on CPU (bench/bench_speed.py), that full-width stream
cost ResNet-56 at F = 0.64 half of its ideal speed-up. Here an addition of two compact tensors
holds the union of their channels: the operand that holds the union takes the other's channels in
place (`torch.index_add`), so a channel removed by every producer of a stream is in no tensor of
it, and the option-A shortcut (strided subsample, zero channels padded on) keeps it compact.
Each function returns the new node and its channels, or None when the op is not one it knows (the caller then
scatters its inputs back to full width).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx, nn

from pruning.channels import META
from pruning.layers import ChannelAdd, ChannelScatter

if TYPE_CHECKING:
    from pruning.rebuild import Builder

Compact = tuple[fx.Node, torch.Tensor | None]  # the new node and the channels it holds (None: all)

_ADD_OPS = {operator.add, torch.add}
_FRESH_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, ChannelScatter)


def compact(builder: Builder, node: fx.Node) -> Compact | None:
    """`node` on the kept channels of its live inputs, if it is an addition, subsample or pad."""
    if node.op != "call_function":
        return None
    if node.target in _ADD_OPS:
        return _add(builder, node)
    if node.target is operator.getitem:
        return _subsample(builder, node)
    if node.target is F.pad:
        return _pad(builder, node)
    return None


def _add(builder: Builder, node: fx.Node) -> Compact | None:
    if node.kwargs or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return None
    states = [builder.env[a] for a in node.args]
    shape = _shape(node)
    if shape is None or len(shape) < 2 or any(_shape(a) != shape for a in node.args):
        return None  # broadcasting: channels do not line up one to one
    if any(s.node is None for s in states) or all(s.index is None for s in states):
        return None
    width = shape[1]
    indices = [torch.arange(width) if s.index is None else s.index.cpu() for s in states]
    union = torch.unique(torch.cat(indices))  # sorted
    holders = [i for i, index in enumerate(indices) if torch.equal(index, union)]
    first = holders[0] if holders else 0
    other = 1 - first
    if torch.equal(indices[other], union):
        new = builder.graph.call_function(operator.add, tuple(s.node for s in states), name=node.name)
        return new, None if len(union) == width else union
    if holders:
        base, in_place = states[first].node, _last_read(node.args[first], node, builder)
    else:  # neither holds the union: the first is spread over it (zero-padded to the union only)
        scatter = ChannelScatter(_positions(union, indices[0], builder), len(union))
        base = builder.graph.call_module(builder.add_attr(f"{node.name}_scatter", scatter), (states[0].node,))
        in_place = True
    add = ChannelAdd(_positions(union, indices[other], builder), in_place)
    new = builder.graph.call_module(builder.add_attr(f"{node.name}_index_add", add), (base, states[other].node))
    return new, None if len(union) == width else union


def _subsample(builder: Builder, node: fx.Node) -> Compact | None:
    """`x[:, :, ::s, ::s]` and the like: slices that keep every channel, so the index is kept."""
    source, key = node.args
    state = builder.env.get(source) if isinstance(source, fx.Node) else None
    if getattr(state, "index", None) is None or state.node is None:
        return None
    everything = slice(None)
    if not isinstance(key, tuple) or len(key) < 2 or key[:2] != (everything, everything):
        return None
    if not all(isinstance(k, slice) for k in key):
        return None
    return builder.graph.call_function(operator.getitem, (state.node, key), name=node.name), state.index


def _pad(builder: Builder, node: fx.Node) -> Compact | None:
    """Zero padding of the channels (option A): the compact tensor is not padded, its index shifts."""
    source, pad = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    state = builder.env.get(source) if isinstance(source, fx.Node) else None
    shape = _shape(source) if isinstance(source, fx.Node) else None
    if getattr(state, "index", None) is None or state.node is None:
        return None
    if mode != "constant" or value not in (None, 0) or shape is None or not isinstance(pad, tuple | list):
        return None
    at = 2 * (len(shape) - 2)  # pad lists the last dimension first; channels are dimension 1
    if len(pad) > at + 2 or len(pad) % 2 or any(p < 0 for p in pad):
        return None
    front = pad[at] if len(pad) > at else 0
    spatial = tuple(pad[:at])
    new = state.node
    if any(spatial):
        new = builder.graph.call_function(F.pad, (new, spatial), {"mode": "constant", "value": value}, name=node.name)
    return new, state.index + front


def _last_read(value: fx.Node, add: fx.Node, builder: Builder) -> bool:
    """Whether `add` may write into `value`: no later op reads it or a tensor it may share memory
    with (through an identity, a view or an in-place op), and it is not the model's input."""
    order = {n: i for i, n in enumerate(builder.traced.graph.nodes)}
    node = value
    while True:
        if any(order[user] > order[add] for user in node.users):
            return False
        if node.op in ("placeholder", "get_attr"):
            return False
        if not _may_alias(node, builder):
            return True
        if not node.args or not isinstance(node.args[0], fx.Node):
            return False
        node = node.args[0]


def _may_alias(node: fx.Node, builder: Builder) -> bool:
    """Whether `node`'s output may be (a view of) its first input's memory: only ops known to
    return a new tensor count as fresh."""
    if node.op == "call_module":
        return not isinstance(builder.traced.get_submodule(node.target), _FRESH_MODULES)
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu):
            return bool(node.kwargs.get("inplace")) or node.args[1:2] == (True,)
        return node.target not in _ADD_OPS
    return True


def _positions(union: torch.Tensor, index: torch.Tensor, builder: Builder) -> torch.Tensor:
    """Where each channel of `index` sits in the compact `union`."""
    return torch.searchsorted(union, index).to(builder.device)


def _shape(node: fx.Node) -> torch.Size | None:
    meta = node.meta.get(META)
    return getattr(meta, "shape", None)
