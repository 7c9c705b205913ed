"""Channel spaces of a traced model: which BNs are prunable, and the shapes surgery needs (§3.3, §4.2).

A *channel space* is the output of a conv or linear layer (groups 1) with the ops that keep its
channels one to one: BN, zero-preserving activations, pooling, depthwise convs. A space is
prunable when it holds a BN and every value leaving it has passed one, so a removed channel is
exactly 0 wherever it leaves; its BNs are the prunable BNs (in ResNets, VGG and MobileNet-V2: all
of them). `trace` gives the torch.fx graph, `analyse` its spaces, and `propagate_shapes` writes each
tensor's shape into its node, which `pruning.surgery` reads to rebuild the graph without channels.
"""

from __future__ import annotations

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
_MEMBERS = ("bn", "depthwise", "activation", "pool")  # kinds that keep their input's channel space
META = "pruning_shape"  # the node.meta key `propagate_shapes` writes a `Meta` under


class Meta(NamedTuple):
    shape: torch.Size
    dtype: torch.dtype


@dataclass(frozen=True)
class Spaces:
    """The channel spaces of a traced model: `bns[root]` lists the BNs of each prunable space."""

    kind: dict[fx.Node, str]
    root: dict[fx.Node, fx.Node]
    zeroed: set[fx.Node]  # a removed channel is exactly 0 here in the masked model
    bns: dict[fx.Node, list[fx.Node]]


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the `leaves` module types kept whole."""

    def __init__(self, leaves: tuple[type[nn.Module], ...]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, leaves: tuple[type[nn.Module], ...] = ()) -> fx.GraphModule:
    """`model` traced with torch.fx (layers keep their names); modules of type `leaves` are one op each."""
    try:
        return fx.GraphModule(model, _Tracer(leaves).trace(model), class_name=type(model).__name__)
    except Exception as error:  # fx raises many types; the user needs one line
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx: {_first_line(error)}") from None


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and writes each tensor's shape and dtype into its node's meta."""

    def run_node(self, n: fx.Node) -> object:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta[META] = Meta(result.shape, result.dtype)
        return result


def propagate_shapes(traced: fx.GraphModule, input_shape: Sequence[int]) -> None:
    """Writes `Meta(shape, dtype)` under `node.meta[META]` for every tensor of one (C, H, W) input."""
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


def analyse(traced: fx.GraphModule) -> Spaces:
    """The kind and channel space of every node, where a removed channel is 0, and the prunable BNs."""
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
        width = out_channels(modules[space.target])
        bn_nodes = [n for n in nodes if kind[n] == "bn"]
        leaks = any(root[user] is not space for n in nodes if n not in zeroed for user in n.users)
        if bn_nodes and not leaks and all(modules[n.target].num_features == width for n in bn_nodes):
            bns[space] = bn_nodes
    return Spaces(kind, root, zeroed, bns)


def out_channels(m: nn.Module) -> int:
    """The output channels of a conv, or the output features of a linear layer."""
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels
