"""The pruned graph, written op by op from the masked, traced model and the kept channels (§4.2).

Each value of the new graph is `_Live` (a tensor holding channels `index` of the original's, the
others being exactly 0) or `_Const` (the same for every input: a branch whose channels all went).
Consumers take only the channels they get. Where a compact tensor meets an op that needs every
channel (a grouped conv, anything unknown) it is scattered back, zero-padded, to full width.

Residual additions, subsamples and channel pads of compact tensors stay compact:
`pruning.streams`.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from pruning.channels import META, Spaces, out_channels
from pruning.layers import ChannelScatter
from pruning.streams import compact

_BROADCAST_OPS = {operator.add, torch.add, operator.sub, torch.sub, operator.mul, torch.mul}


@dataclass(frozen=True)
class _Live:
    node: fx.Node | None  # None when no channel is left: the value is never computed
    index: torch.Tensor | None  # the channels of the full tensor it holds; None: all


@dataclass(frozen=True)
class _Const:
    value: torch.Tensor  # shape (1, C, 1, ...): the same for every input and position
    origin: frozenset[fx.Node]  # the spaces whose removal made it constant


class Revive(Exception):
    """A constant must become a full tensor: its spaces keep one channel to give it a shape."""

    def __init__(self, origin: frozenset[fx.Node]) -> None:
        super().__init__("constant needs a shape")
        self.origin = origin



def _with_tensors(m: nn.Module, **tensors: torch.Tensor | None) -> nn.Module:
    """A copy of layer `m` with the named parameters and buffers replaced by copies of `tensors`."""
    own = (*m.parameters(recurse=False), *m.buffers(recurse=False))
    new = copy.deepcopy(m, {id(t): t for t in own})  # shares what is not replaced below
    for name, value in tensors.items():
        if value is not None:
            old = getattr(m, name)
            value = value.detach().clone()
            setattr(
                new, name, nn.Parameter(value, old.requires_grad) if isinstance(old, nn.Parameter) else value
            )
    return new


def _take(t: torch.Tensor | None, index: torch.Tensor | None, dim: int = 0) -> torch.Tensor | None:
    return t if t is None or index is None else t.index_select(dim, index.to(t.device))


def _sliced(m: nn.Module, out: torch.Tensor | None, into: torch.Tensor | None) -> nn.Module:
    """Conv (groups 1), linear, BN or depthwise conv `m` restricted to channels `out` from `into`."""
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        new = _with_tensors(m, weight=_take(m.weight, out), bias=_take(m.bias, out),
                            running_mean=_take(m.running_mean, out), running_var=_take(m.running_var, out))  # fmt: skip
        new.num_features = new.weight.shape[0]
        return new
    weight = _take(m.weight, out)
    grouped = getattr(m, "groups", 1) > 1
    new = _with_tensors(m, weight=weight if grouped else _take(weight, into, 1), bias=_take(m.bias, out))
    if isinstance(m, nn.Linear):
        new.out_features, new.in_features = new.weight.shape
    else:
        new.out_channels = new.weight.shape[0]
        new.groups = new.out_channels if grouped else 1
        new.in_channels = new.weight.shape[1] * new.groups
    return new


def _is_pointwise(m: nn.Module) -> bool:
    """A linear layer or a 1×1 conv without padding maps a spatially constant input to a constant."""
    if isinstance(m, nn.Linear):
        return True
    unpadded = isinstance(m.padding, str) or not any(m.padding)  # "valid", or "same" with a 1×1 kernel
    return all(k == 1 for k in m.kernel_size) and unpadded


class Builder:
    """Writes the pruned graph op by op from the masked, traced model and the kept channels."""

    def __init__(self, traced: fx.GraphModule, spaces: Spaces, kept: dict[fx.Node, torch.Tensor | None]):
        self.traced, self.spaces, self.kept = traced, spaces, kept
        self.graph = fx.Graph()
        self.attrs: dict[str, object] = {}
        self.env: dict[fx.Node, _Live | _Const] = {}
        self.scattered: dict[fx.Node, fx.Node] = {}
        param = next(traced.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")

    @torch.no_grad()
    def build(self, class_name: str) -> fx.GraphModule:
        for node in self.traced.graph.nodes:
            if node.op == "get_attr":
                self.attrs[node.target] = _fetch(self.traced, node.target)
            kind = self.spaces.kind[node]
            if node.op in ("placeholder", "get_attr", "output"):
                self.env[node] = _Live(self.graph.node_copy(node, self._full), None)
            elif kind == "other":
                self.env[node] = self._other(node)
            else:
                handler = getattr(self, "_bn" if kind == "depthwise" else f"_{kind}")
                self.env[node] = handler(node, self.env[node.args[0]])
        pruned = fx.GraphModule(self.attrs, self.graph, class_name=class_name)
        pruned.graph.eliminate_dead_code()
        pruned.delete_all_unused_submodules()
        pruned.recompile()
        return pruned

    # -- values ---------------------------------------------------------------------------------
    def _full(self, node: fx.Node) -> fx.Node:
        """The full-width tensor of `node`: a compact one is scattered back (zero-padded)."""
        state = self.env[node]
        if isinstance(state, _Const):
            raise Revive(state.origin)
        if state.index is None:
            return state.node
        if node not in self.scattered:
            if state.node is None:
                raise RuntimeError(f"surgery would read removed channels at {node.name}")
            width = node.meta[META].shape[1]
            name = self.add_attr(
                f"{_base(node)}_scatter", ChannelScatter(state.index.to(self.device), width)
            )
            self.scattered[node] = self.graph.call_module(name, (state.node,))
        return self.scattered[node]

    def add_attr(self, base: str, value: object) -> str:
        name, n = base, 0
        while name in self.attrs:
            n += 1
            name = f"{base}_{n}"
        self.attrs[name] = value
        return name

    def _emit(self, node: fx.Node, source: fx.Node, module: nn.Module | None = None) -> fx.Node:
        """`node` applied to the new `source`, with `module` in place of its own if given."""
        if node.op == "call_module":
            self.attrs[node.target] = module if module is not None else self.traced.get_submodule(node.target)
        return self.graph.create_node(node.op, node.target, (source, *node.args[1:]), node.kwargs, node.name)

    def _empty(self, node: fx.Node) -> _Live | _Const:
        """Every channel of `node` removed: 0 after a BN, otherwise never computed."""
        if node not in self.spaces.zeroed:
            return _Live(None, torch.empty(0, dtype=torch.long))
        meta = node.meta[META]
        shape = (1, meta.shape[1], *[1] * (len(meta.shape) - 2))
        return _Const(
            torch.zeros(shape, dtype=meta.dtype, device=self.device), frozenset({self.spaces.root[node]})
        )

    def _in_prunable_space(self, node: fx.Node) -> bool:
        return self.spaces.root[node] in self.kept

    # -- one handler per kind -------------------------------------------------------------------
    def _producer(self, node: fx.Node, state: _Live | _Const) -> _Live | _Const:
        m = self.traced.get_submodule(node.target)
        if isinstance(state, _Const):
            return _Const(self._constant_through(m, node, state), state.origin)
        source, into = state.node, state.index
        if into is not None and isinstance(m, nn.Linear) and len(node.args[0].meta[META].shape) != 2:
            source, into = self._full(node.args[0]), None  # channels are dim 1; linear acts on the last
        out = self.kept.get(node)
        if out is not None and out.numel() == 0:
            return self._empty(node)
        module = m if out is None and into is None else _sliced(m, out, into)
        return _Live(self._emit(node, source, module), out)

    def _bn(self, node: fx.Node, state: _Live | _Const) -> _Live | _Const:
        """BN or depthwise conv: restricted to the kept channels of its space."""
        m = self.traced.get_submodule(node.target)
        if isinstance(state, _Const):
            value = (
                m(state.value) if self.spaces.kind[node] == "bn" else self._constant_through(m, node, state)
            )
            return _Const(value, state.origin)
        if state.index is not None and not self._in_prunable_space(node):
            return _Live(self._emit(node, self._full(node.args[0])), None)
        if state.node is None:
            return self._empty(node)
        module = m if state.index is None else _sliced(m, state.index, None)
        return _Live(self._emit(node, state.node, module), state.index)

    def _activation(self, node: fx.Node, state: _Live | _Const) -> _Live | _Const:
        if isinstance(state, _Const):
            return _Const(self._call(node, state.value.clone()), state.origin)
        return self._elementwise(node, state)

    def _pool(self, node: fx.Node, state: _Live | _Const) -> _Live | _Const:
        if not isinstance(state, _Const):
            return self._elementwise(node, state)
        m = self.traced.get_submodule(node.target) if node.op == "call_module" else None
        if node.target is F.avg_pool2d or isinstance(m, nn.AvgPool1d | nn.AvgPool2d):
            raise Revive(state.origin)  # counting the zero padding breaks uniformity at the border
        return state  # max and adaptive-average pooling of a uniform map is the same uniform map

    def _elementwise(self, node: fx.Node, state: _Live) -> _Live | _Const:
        if state.node is None:
            return self._empty(node)
        return _Live(self._emit(node, state.node), state.index)

    def _flatten(self, node: fx.Node, state: _Live | _Const) -> _Live | _Const:
        shape = node.args[0].meta[META].shape
        if isinstance(state, _Const):
            return _Const(state.value.expand(1, *shape[1:]).flatten(1), state.origin)
        if state.node is None:
            raise RuntimeError(f"surgery would flatten removed channels at {node.name}")
        new = self._emit(node, state.node)
        if state.index is None:
            return _Live(new, None)
        area = math.prod(shape[2:])
        features = (state.index[:, None] * area + torch.arange(area)).flatten()
        return _Live(new, features)

    def _other(self, node: fx.Node) -> _Live | _Const:
        """Any other op gets full-width inputs; a constant operand of +, −, × becomes a buffer."""
        states = [self.env[n] for n in node.all_input_nodes]
        consts = [s for s in states if isinstance(s, _Const)]
        if node.op == "call_module":
            self.attrs[node.target] = self.traced.get_submodule(node.target)
        if not consts:
            new = compact(self, node)
            if new is not None:
                return _Live(*new)
            return _Live(self.graph.node_copy(node, self._full), None)
        origin = frozenset().union(*(s.origin for s in consts))
        if node.op != "call_function" or node.target not in _BROADCAST_OPS:
            raise Revive(origin)
        if len(consts) == len(states):
            value = node.target(*fx.node.map_arg(node.args, lambda n: self.env[n].value), **node.kwargs)
            return _Const(value, origin)
        live = [n for n in node.all_input_nodes if isinstance(self.env[n], _Live)]
        adds_zero = node.target in (operator.add, torch.add) and not node.kwargs and len(node.args) == 2
        same_shape = _shape(live[0]) == _shape(node)
        if adds_zero and len(live) == 1 and same_shape and not any(c.value.any() for c in consts):
            return self.env[live[0]]  # a removed branch adds nothing: its channels cost nothing
        args = fx.node.map_arg(node.args, self._operand)
        return _Live(self.graph.create_node(node.op, node.target, args, node.kwargs, node.name), None)

    def _operand(self, node: fx.Node) -> fx.Node:
        state = self.env[node]
        if isinstance(state, _Live):
            return self._full(node)
        return self.graph.get_attr(self.add_attr(f"{_base(node)}_constant", state.value.detach().clone()))

    # -- constants ------------------------------------------------------------------------------
    def _constant_through(self, m: nn.Module, node: fx.Node, state: _Const) -> torch.Tensor:
        """A conv or linear layer applied to a constant input, when that is still a constant."""
        if not state.value.any():
            ndim = len(node.meta[META].shape)
            shape = (1, out_channels(m), *[1] * (ndim - 2))
            bias = m.bias if m.bias is not None else torch.zeros(shape[1], device=self.device)
            return bias.detach().reshape(shape).clone()
        if not _is_pointwise(m):
            raise Revive(state.origin)
        if isinstance(m, nn.Linear):
            return m(state.value)
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        return conv(state.value, m.weight, m.bias, groups=m.groups)

    def _call(self, node: fx.Node, value: torch.Tensor) -> torch.Tensor:
        if node.op == "call_module":
            return self.traced.get_submodule(node.target)(value)
        if node.op == "call_method":
            return getattr(value, node.target)(*node.args[1:], **node.kwargs)
        return node.target(value, *node.args[1:], **node.kwargs)


def _fetch(traced: fx.GraphModule, target: str) -> object:
    owner, _, name = target.rpartition(".")
    return getattr(traced.get_submodule(owner), name)


def _shape(node: fx.Node) -> torch.Size | None:
    meta = node.meta.get(META)
    return getattr(meta, "shape", None)


def _base(node: fx.Node) -> str:
    return node.target if node.op == "call_module" else node.name
