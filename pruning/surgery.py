"""Channel surgery: remove the channels whose scaling factor |γ| is below the threshold (§3.3, §4.2).

`masked(model, threshold)` is the reference: γ and β of those channels set to 0, so in eval mode
each is exactly 0 after its BN. `prune` returns a new, smaller dense model (a torch.fx
GraphModule whose layers keep their names) that computes the same function without them.

How. The model is traced with torch.fx. A *channel space* is the output of a conv or linear layer
(groups 1) with the ops that keep its channels one to one: BN, zero-preserving activations,
pooling, depthwise convs. A space is prunable when it holds a BN and every value leaving it has
passed one, so a removed channel is exactly 0 wherever it leaves; its BNs are the prunable BNs
(in ResNets, VGG and MobileNet-V2: all of them), and a channel goes only when every BN of the
space agrees (MobileNet-V2's expanded channels are shared by two). The new graph computes only the
kept channels; consumers take fewer inputs, and where a compact tensor meets an op that needs all
channels (a residual addition, a grouped conv, anything unknown) it is scattered back, zero-padded,
to full width: the paper's scheme for the last conv of a residual block (§4.2, after He et al.,
2019). A branch that loses every channel becomes the constant its later BNs still add, folded at
prune time. Torch-Pruning's DependencyGraph is not used: it couples every layer feeding a residual
addition into one group (the stream is pruned whole or not at all), which is not the paper's
zero-padding, and this way the core stays torch only.
"""

from __future__ import annotations

import copy
import math
import numbers
import operator
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.Tanh,
                nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)  # fmt: skip
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.silu,
                         F.gelu, F.hardswish, F.mish, torch.tanh}  # fmt: skip
_ACTIVATION_METHODS = {"relu", "relu_", "tanh"}
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d)
_POOL_FUNCTIONS = {F.max_pool2d, F.adaptive_avg_pool2d, F.avg_pool2d}
_BROADCAST_OPS = {operator.add, torch.add, operator.sub, torch.sub, operator.mul, torch.mul}
_MEMBERS = ("bn", "depthwise", "activation", "pool")  # kinds that keep their input's channel space
_META = "pruning_shape"


class _Meta(NamedTuple):
    shape: torch.Size
    dtype: torch.dtype


@dataclass(frozen=True)
class _Spaces:
    """The channel spaces of a traced model: `bns[root]` lists the BNs of each prunable space."""

    kind: dict[fx.Node, str]
    root: dict[fx.Node, fx.Node]
    zeroed: set[fx.Node]  # a removed channel is exactly 0 here in the masked model
    bns: dict[fx.Node, list[fx.Node]]


@dataclass(frozen=True)
class _Live:
    node: fx.Node | None  # None when no channel is left: the value is never computed
    index: torch.Tensor | None  # the channels of the full tensor it holds; None: all


@dataclass(frozen=True)
class _Const:
    value: torch.Tensor  # shape (1, C, 1, ...): the same for every input and position
    origin: frozenset[fx.Node]  # the spaces whose removal made it constant


class _Revive(Exception):
    """A constant must become a full tensor: its spaces keep one channel to give it a shape."""

    def __init__(self, origin: frozenset[fx.Node]) -> None:
        super().__init__("constant needs a shape")
        self.origin = origin


class ChannelScatter(nn.Module):
    """Zero-pads a tensor holding channels `index` of a `width`-channel tensor back to full width."""

    def __init__(self, index: torch.Tensor, width: int) -> None:
        super().__init__()
        self.width = width
        self.register_buffer("index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = x.new_zeros((x.shape[0], self.width, *x.shape[2:]))
        return full.index_copy(1, self.index, x)

    def extra_repr(self) -> str:
        return f"{self.index.numel()} -> {self.width}"


def prunable_bns(model: nn.Module) -> list[nn.BatchNorm1d | nn.BatchNorm2d]:
    """The BN layers whose channels `prune` can remove; their γ are the scaling factors (§3.1)."""
    spaces = _analyse(_trace(model))
    return [model.get_submodule(n.target) for bn_nodes in spaces.bns.values() for n in bn_nodes]


def masked(model: nn.Module, threshold: float) -> nn.Module:
    """A deep copy with γ and β of every prunable channel with |γ| < threshold set to 0."""
    _check_threshold(threshold)
    reference = copy.deepcopy(model)
    _mask_(prunable_bns(reference), threshold)
    return reference


def prune(model: nn.Module, threshold: float, input_shape: Sequence[int]) -> nn.Module:
    """A new, smaller dense model without the channels whose |γ| < threshold (input untouched).

    In eval mode its output equals `masked(model, threshold)`'s. `input_shape` is (C, H, W) of one
    input; the shapes it gives fix how a flatten before a linear layer maps channels to features.
    """
    _check_threshold(threshold)
    reference = copy.deepcopy(model).eval()
    traced = _trace(reference)
    spaces = _analyse(traced)
    _propagate_shapes(traced, input_shape)
    strongest = {
        root: torch.stack([traced.get_submodule(n.target).weight.detach().abs() for n in bn_nodes]).amax(0)
        for root, bn_nodes in spaces.bns.items()
    }
    _mask_([traced.get_submodule(n.target) for bn_nodes in spaces.bns.values() for n in bn_nodes], threshold)
    forced: set[fx.Node] = set()
    while True:
        kept = {root: _kept(gammas, threshold, root in forced) for root, gammas in strongest.items()}
        try:
            pruned = _Builder(traced, spaces, kept).build(type(model).__name__)
        except _Revive as revive:
            if revive.origin <= forced:
                raise RuntimeError("surgery failed to give a constant branch a shape") from None
            forced |= revive.origin
            continue
        return pruned.train(model.training)


def _check_threshold(threshold: float) -> None:
    if not isinstance(threshold, numbers.Real) or math.isnan(threshold) or threshold < 0:
        raise ValueError(f"pruning threshold must be a number >= 0, got {threshold!r}")


def _mask_(bns: list[nn.Module], threshold: float) -> None:
    with torch.no_grad():
        for bn in bns:
            small = bn.weight.abs() < threshold
            bn.weight[small] = 0.0
            bn.bias[small] = 0.0


def _kept(strongest: torch.Tensor, threshold: float, forced: bool) -> torch.Tensor | None:
    """Channels some BN of the space keeps; one (the strongest) if `forced` and none is left."""
    keep = torch.nonzero(strongest >= threshold).flatten().cpu()
    if keep.numel() == 0 and forced:
        keep = strongest.argmax().view(1).cpu()
    return None if keep.numel() == strongest.numel() else keep


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with `ChannelScatter` kept whole so that a pruned model can be pruned again."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, ChannelScatter) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.GraphModule(model, _Tracer().trace(model), class_name=type(model).__name__)
    except Exception as error:  # fx raises many types; the user needs one line
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx: {_first_line(error)}") from None


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and writes each tensor's shape and dtype into its node's meta."""

    def run_node(self, n: fx.Node) -> object:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta[_META] = _Meta(result.shape, result.dtype)
        return result


def _propagate_shapes(traced: fx.GraphModule, input_shape: Sequence[int]) -> None:
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input shape must be positive sizes like (3, 32, 32), got {input_shape}")
    param = next(traced.parameters(), None)
    x = torch.zeros((1, *shape), device=param.device if param is not None else "cpu")
    with torch.no_grad():
        try:  # fake tensors: shapes without the arithmetic
            with FakeTensorMode(allow_non_fake_inputs=True):
                _ShapeRecorder(traced).run(x)
            return
        except Exception:  # an op fake tensors do not support, or a shape error: ask the real run
            pass
        try:
            _ShapeRecorder(traced).run(x)
        except RuntimeError as error:
            raise ValueError(f"input shape {shape} does not fit the model: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _kind(node: fx.Node, modules: dict[str, nn.Module], calls: Counter) -> str:
    """What an op does to channels: produces them, keeps them (a member kind), flattens, or other."""
    if len(node.all_input_nodes) != 1 or node.args[:1] != tuple(node.all_input_nodes):
        return "other"
    if node.op == "call_module":
        m = modules[node.target]
        once = calls[node.target] == 1  # a layer with weights is resized for one call site only
        if isinstance(m, nn.Conv1d | nn.Conv2d) and once:
            if m.groups == 1:
                return "producer"
            return "depthwise" if m.groups == m.in_channels == m.out_channels else "other"
        if isinstance(m, nn.Linear) and once:
            return "producer"
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.affine and once:
            return "bn"
        if isinstance(m, _ACTIVATIONS):
            return "activation"
        if isinstance(m, _POOLS):
            return "pool"
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return "flatten"
    rest = (*node.args[1:], *node.kwargs.values())
    if node.op == "call_function":
        if node.target in _ACTIVATION_FUNCTIONS:
            return "activation"
        if node.target in _POOL_FUNCTIONS:
            return "pool"
        if node.target is torch.flatten and rest in ((1,), (1, -1)):
            return "flatten"
    if node.op == "call_method":
        if node.target in _ACTIVATION_METHODS and not rest:
            return "activation"
        if node.target == "flatten" and rest in ((1,), (1, -1)):
            return "flatten"
    return "other"


def _analyse(traced: fx.GraphModule) -> _Spaces:
    modules = dict(traced.named_modules())
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    kind: dict[fx.Node, str] = {}
    root: dict[fx.Node, fx.Node] = {}
    zeroed: set[fx.Node] = set()
    for node in traced.graph.nodes:
        kind[node] = _kind(node, modules, calls)
        if kind[node] not in _MEMBERS:
            root[node] = node
            continue
        source = node.args[0]
        root[node] = root[source]
        biased = kind[node] == "depthwise" and modules[node.target].bias is not None
        if kind[node] == "bn" or (source in zeroed and not biased):
            zeroed.add(node)
    members: dict[fx.Node, list[fx.Node]] = defaultdict(list)
    for node in traced.graph.nodes:
        members[root[node]].append(node)
    bns = {}
    for space, nodes in members.items():
        if kind[space] != "producer":
            continue
        width = _out_channels(modules[space.target])
        bn_nodes = [n for n in nodes if kind[n] == "bn"]
        leaks = any(root[user] is not space for n in nodes if n not in zeroed for user in n.users)
        if bn_nodes and not leaks and all(modules[n.target].num_features == width for n in bn_nodes):
            bns[space] = bn_nodes
    return _Spaces(kind, root, zeroed, bns)


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


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


class _Builder:
    """Writes the pruned graph op by op from the masked, traced model and the kept channels."""

    def __init__(self, traced: fx.GraphModule, spaces: _Spaces, kept: dict[fx.Node, torch.Tensor | None]):
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
            raise _Revive(state.origin)
        if state.index is None:
            return state.node
        if node not in self.scattered:
            if state.node is None:
                raise RuntimeError(f"surgery would read removed channels at {node.name}")
            width = node.meta[_META].shape[1]
            name = self._add_attr(
                f"{_base(node)}_scatter", ChannelScatter(state.index.to(self.device), width)
            )
            self.scattered[node] = self.graph.call_module(name, (state.node,))
        return self.scattered[node]

    def _add_attr(self, base: str, value: object) -> str:
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
        meta = node.meta[_META]
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
        if into is not None and isinstance(m, nn.Linear) and len(node.args[0].meta[_META].shape) != 2:
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
            raise _Revive(state.origin)  # counting the zero padding breaks uniformity at the border
        return state  # max and adaptive-average pooling of a uniform map is the same uniform map

    def _elementwise(self, node: fx.Node, state: _Live) -> _Live | _Const:
        if state.node is None:
            return self._empty(node)
        return _Live(self._emit(node, state.node), state.index)

    def _flatten(self, node: fx.Node, state: _Live | _Const) -> _Live | _Const:
        shape = node.args[0].meta[_META].shape
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
            return _Live(self.graph.node_copy(node, self._full), None)
        origin = frozenset().union(*(s.origin for s in consts))
        if node.op != "call_function" or node.target not in _BROADCAST_OPS:
            raise _Revive(origin)
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
        return self.graph.get_attr(self._add_attr(f"{_base(node)}_constant", state.value.detach().clone()))

    # -- constants ------------------------------------------------------------------------------
    def _constant_through(self, m: nn.Module, node: fx.Node, state: _Const) -> torch.Tensor:
        """A conv or linear layer applied to a constant input, when that is still a constant."""
        if not state.value.any():
            ndim = len(node.meta[_META].shape)
            shape = (1, _out_channels(m), *[1] * (ndim - 2))
            bias = m.bias if m.bias is not None else torch.zeros(shape[1], device=self.device)
            return bias.detach().reshape(shape).clone()
        if not _is_pointwise(m):
            raise _Revive(state.origin)
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
    meta = node.meta.get(_META)
    return getattr(meta, "shape", None)


def _base(node: fx.Node) -> str:
    return node.target if node.op == "call_module" else node.name
