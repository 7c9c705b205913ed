"""Channel surgery against its independent truth: the masked model (γ, β of removed channels = 0).

Every pruned model must give the masked model's output in eval mode to 1e-4 relative; widths,
FLOPs and parameter counts are checked against hand counts where a hand count is possible.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pruning.flops import count_flops
from pruning.layers import ChannelAdd, ChannelScatter
from pruning.prunable import prunable_bns
from pruning.surgery import masked, prune

THRESHOLD = 0.1
BatchNorms = (nn.BatchNorm1d, nn.BatchNorm2d)


# -- helpers -------------------------------------------------------------------------------------
def polarize_(model: nn.Module, input_shape, seed: int = 0, low: float = 0.4) -> nn.Module:
    """γ as after polarization (a share `low` near 0, the rest in [0.3, 1], 10 % negative), random β,
    then BN statistics measured on random inputs so that every layer's output depends on the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, BatchNorms)):
            n = bn.num_features
            near_zero = torch.rand(n, generator=g) < low
            gamma = torch.where(
                near_zero, 0.05 * torch.rand(n, generator=g), 0.3 + 0.7 * torch.rand(n, generator=g)
            )
            sign = torch.where(torch.rand(n, generator=g) < 0.1, -1.0, 1.0)
            bn.weight.copy_(gamma * sign)
            bn.bias.copy_(0.1 * torch.randn(n, generator=g))
    return calibrate_(model, input_shape, g)


def calibrate_(model: nn.Module, input_shape, g: torch.Generator) -> nn.Module:
    bns = [m for m in model.modules() if isinstance(m, BatchNorms)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        model(torch.randn(8, *input_shape, generator=g))
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    return model.eval()


def assert_equivalent(model: nn.Module, threshold: float, input_shape, batch: int = 4) -> nn.Module:
    """Prune, then compare with the masked model in eval mode; returns the pruned model."""
    pruned = prune(model, threshold, input_shape)
    reference = masked(model, threshold).eval()
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = reference(x), pruned.eval()(x)
    scale = want.abs().max()
    assert (want[0] - want[1]).abs().max() > 1e-3 * scale, (
        "the test needs an output that depends on the input"
    )
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * scale
    return pruned


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def names_of(model: nn.Module, modules: list[nn.Module]) -> list[str]:
    by_id = {id(m): name for name, m in model.named_modules()}
    return [by_id[id(m)] for m in modules]


def kept_width(*bns: nn.Module, threshold: float = THRESHOLD) -> int:
    """Channels of a group of BNs sharing channels that survive: some BN keeps |γ| >= threshold."""
    strongest = torch.stack([bn.weight.detach().abs() for bn in bns]).amax(0)
    return int((strongest >= threshold).sum())


# -- a hand-built network with a hand count ------------------------------------------------------
class TinyNet(nn.Module):
    """conv → BN → depthwise → BN (one channel group), 1×1 conv → BN, a grouped conv, flatten of a
    2×2 map into a linear → BN1d, two linear heads added."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 6, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(6)
        self.grouped = nn.Conv2d(6, 4, 3, padding=1, groups=2, bias=False)
        self.bn4 = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(24, 10)
        self.bn5 = nn.BatchNorm1d(10)
        self.fc2 = nn.Linear(10, 5)
        self.fc3 = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(self.conv1(x)))
        a = F.relu(self.bn2(self.dw(a)))
        b = self.bn3(self.conv3(a))
        c = F.relu(self.bn4(self.grouped(b)))
        f = torch.flatten(F.adaptive_avg_pool2d(F.relu(b), 2), 1)
        h = F.relu(self.bn5(self.fc1(f)))
        return self.fc2(h) + self.fc3(torch.flatten(F.adaptive_avg_pool2d(c, 1), 1))


def tiny_net() -> TinyNet:
    net = polarize_(TinyNet(), (3, 8, 8), low=0.0)  # every γ in [0.3, 1] ...
    with torch.no_grad():  # ... except these, below the threshold
        net.bn1.weight[[4, 5, 6]] = 0.01
        net.bn2.weight[[5, 6, 7]] = -0.02  # the group {bn1, bn2} agrees on 5 and 6 only
        net.bn3.weight[[0, 3]] = 0.0
        net.bn4.weight[0] = 0.0  # after a grouped conv: not prunable, left as it is
        net.bn5.weight[[1, 2, 3, 8]] = 0.05
    return net


def test_tiny_net_prunable_bns():
    net = tiny_net()
    assert prunable_bns(net) == [net.bn1, net.bn2, net.bn3, net.bn5]


def test_tiny_net_widths_flops_and_params_by_hand():
    net = tiny_net()
    pruned = assert_equivalent(net, THRESHOLD, (3, 8, 8))
    assert pruned.conv1.out_channels == 6 and pruned.bn1.num_features == 6
    assert (pruned.dw.groups, pruned.dw.out_channels, pruned.bn2.num_features) == (6, 6, 6)
    assert (pruned.conv3.in_channels, pruned.conv3.out_channels, pruned.bn3.num_features) == (6, 4, 4)
    assert pruned.grouped.weight.shape == (4, 3, 3, 3)  # its input is scattered back to 6 channels
    assert pruned.fc1.weight.shape == (6, 16)  # 4 kept channels × 2×2 positions in, 6 neurons out
    assert pruned.bn5.num_features == 6 and pruned.fc2.weight.shape == (5, 6)
    # 8·3·9·64 + 8·9·16 + 6·8·16 + 4·3·9·16 + 10·24 + 5·10 + 5·4
    assert count_flops(net, (3, 8, 8)) == 13_824 + 1_152 + 768 + 1_728 + 240 + 50 + 20
    # 6·3·9·64 + 6·9·16 + 4·6·16 + 4·3·9·16 + 6·16 + 5·6 + 5·4
    assert count_flops(pruned, (3, 8, 8)) == 10_368 + 864 + 384 + 1_728 + 96 + 30 + 20
    # conv1 162, bn1 12, dw 54, bn2 12, conv3 24, bn3 8, grouped 108, bn4 8, fc1 102, bn5 12, fc2 35, fc3 25
    assert params(pruned) == 562 and params(net) == 846


def test_masked_zeroes_exactly_the_small_channels_of_prunable_bns():
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    reference = masked(net, THRESHOLD)
    for name, bn in [
        ("bn1", reference.bn1),
        ("bn2", reference.bn2),
        ("bn3", reference.bn3),
        ("bn5", reference.bn5),
    ]:
        small = before[f"{name}.weight"].abs() < THRESHOLD
        assert small.any()
        assert torch.equal(bn.weight[small], torch.zeros(int(small.sum())))
        assert torch.equal(bn.bias[small], torch.zeros(int(small.sum())))
        assert torch.equal(bn.weight[~small], before[f"{name}.weight"][~small])
        assert torch.equal(bn.bias[~small], before[f"{name}.bias"][~small])
    assert torch.equal(reference.bn4.weight, before["bn4.weight"])  # not prunable: untouched
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), f"masked changed its input's {key}"


def test_prune_leaves_its_input_untouched():
    net = tiny_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pruned = prune(net, THRESHOLD, (3, 8, 8))
    assert net.training and pruned.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.data_ptr() != q.data_ptr() for p in pruned.parameters() for q in net.parameters())


def test_threshold_zero_removes_nothing():
    net = tiny_net()
    pruned = prune(net, 0.0, (3, 8, 8))
    assert count_flops(pruned, (3, 8, 8)) == count_flops(net, (3, 8, 8)) and params(pruned) == params(net)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), net(x), rtol=1e-5, atol=1e-6)


# -- which BNs are prunable ----------------------------------------------------------------------
class Mixed(nn.Module):
    """One BN of each kind that cannot be pruned, and two that can."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_input = nn.BatchNorm2d(3)  # fed by the input: no layer makes its channels
        self.conv_leak = nn.Conv2d(3, 4, 1)
        self.bn_leak = nn.BatchNorm2d(4)  # its conv's output also reaches the addition unmasked
        self.conv_ok = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_ok = nn.BatchNorm2d(4)  # prunable
        self.conv_c = nn.Conv2d(4, 4, 1)
        self.bn_biased = nn.BatchNorm2d(4)  # a biased depthwise conv refills its zeros before they leave
        self.dw_biased = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.conv_d = nn.Conv2d(4, 4, 1)
        self.conv_e = nn.Conv2d(4, 4, 1)
        self.bn_shared = nn.BatchNorm2d(4)  # called twice
        self.bn_post = nn.BatchNorm2d(4)  # after an addition
        self.conv_s = nn.Conv2d(4, 4, 1)
        self.bn_s = nn.BatchNorm2d(4)  # prunable: the sigmoid gets its channels scattered back

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_leak(self.bn_input(x))
        y = self.bn_leak(a) + a
        b = F.relu(self.bn_ok(self.conv_ok(y)))
        c = self.dw_biased(F.relu(self.bn_biased(self.conv_c(b))))
        d = self.bn_shared(self.conv_d(c))
        e = self.bn_shared(self.conv_e(d))
        f = self.bn_post(e + d)
        return torch.sigmoid(self.bn_s(self.conv_s(f)))


def test_only_bns_whose_channels_can_go_are_prunable():
    net = Mixed()
    assert prunable_bns(net) == [net.bn_ok, net.bn_s]


def test_mixed_network_prunes_to_its_masked_model():
    net = polarize_(Mixed(), (3, 6, 6), low=0.0)
    with torch.no_grad():
        for bn in (net.bn_ok, net.bn_s, net.bn_leak, net.bn_post):
            bn.weight[[1, 2]] = 0.0
    pruned = assert_equivalent(net, THRESHOLD, (3, 6, 6))
    assert pruned.conv_ok.out_channels == 2 and pruned.conv_c.in_channels == 2
    assert pruned.conv_s.out_channels == 2
    assert pruned.conv_leak.out_channels == 4 and pruned.bn_post.num_features == 4


# -- torchvision's networks and the registry -----------------------------------------------------
MOBILENET_GROUPS = [("features.0.1", "features.1.conv.0.1")] + [
    (f"features.{i}.conv.0.1", f"features.{i}.conv.1.1") for i in range(2, 18)
]


def expected_widths(model: nn.Module, groups: list[tuple[str, ...]] = ()) -> dict[str, int]:
    """Every BN's width after pruning: its own kept count, or its group's (channels shared)."""
    group_of = {name: group for group in groups for name in group}
    widths = {}
    for name, bn in model.named_modules():
        if isinstance(bn, BatchNorms):
            group = group_of.get(name, (name,))
            widths[name] = kept_width(*(model.get_submodule(n) for n in group))
    return widths


def check_model(model: nn.Module, input_shape, groups=()) -> nn.Module:
    polarize_(model, input_shape)
    every_bn = [m for m in model.modules() if isinstance(m, BatchNorms)]
    prunable = prunable_bns(model)  # in these networks every BN's channels can go
    assert len(prunable) == len(every_bn) and {id(m) for m in prunable} == {id(m) for m in every_bn}
    pruned = assert_equivalent(model, THRESHOLD, input_shape)
    for name, width in expected_widths(model, groups).items():
        assert pruned.get_submodule(name).num_features == width, name
    assert count_flops(pruned, input_shape) < count_flops(model, input_shape)
    assert params(pruned) < params(model)
    return pruned


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "vgg11_bn"])
def test_torchvision_models_prune_to_their_masked_model(name):
    model = getattr(torchvision.models, name)(weights=None)
    check_model(model, (3, 32, 32), MOBILENET_GROUPS if name == "mobilenet_v2" else ())


def registered_models() -> list[str]:
    try:
        from trainers.models import available
    except ImportError:
        return []
    return available()


@pytest.mark.parametrize("name", registered_models())
def test_registered_models_prune_to_their_masked_model(name):
    from trainers.models import build, input_size

    side = min(input_size(name), 32)  # every registered model ends in an adaptive pool
    model = build(name, num_classes=10)
    check_model(model, (3, side, side), MOBILENET_GROUPS if name == "mobilenet_v2" else ())


# -- the paper's residual scheme -----------------------------------------------------------------
def uniform_gammas_(model: nn.Module, input_shape) -> nn.Module:
    """Every γ in [0.5, 1]: nothing below the test threshold unless a test puts it there."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, BatchNorms)):
            bn.weight.copy_(0.5 + 0.5 * torch.rand(bn.num_features, generator=g))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
    return calibrate_(model, input_shape, g)


def module_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules()}


@pytest.mark.parametrize(
    ("name", "inner", "removed", "flops"),
    [
        # 32×32 input: layer1 runs at 8×8; two 3×3 convs 64→64
        ("resnet18", ["layer1.0.bn1"], ["layer1.0.conv1", "layer1.0.conv2"], 2 * 64 * 64 * 9 * 64),
        # bottleneck: 1×1 64→64, 3×3 64→64, 1×1 64→256; the last folds into the constant
        ("resnet50", ["layer1.0.bn1"], ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3"],
         (64 * 64 + 64 * 64 * 9 + 64 * 256) * 64),
        # inverted residual at 8×8: expand 24→144, depthwise 144, project 144→24
        ("mobilenet_v2", ["features.3.conv.0.1", "features.3.conv.1.1"],
         ["features.3.conv.0.0", "features.3.conv.1.0", "features.3.conv.2"], (24 * 144 * 2 + 144 * 9) * 64),
    ],
)  # fmt: skip
def test_a_block_whose_inner_channels_all_go_keeps_only_its_constant(name, inner, removed, flops):
    model = uniform_gammas_(getattr(torchvision.models, name)(weights=None), (3, 32, 32))
    with torch.no_grad():
        for bn_name in inner:
            model.get_submodule(bn_name).weight.zero_()
    pruned = assert_equivalent(model, 0.2, (3, 32, 32))
    assert not module_names(pruned) & set(removed)
    constants = [n for n, _ in pruned.named_buffers() if n.endswith("constant")]
    assert len(constants) == 1  # what the block's output BN still adds
    assert count_flops(model, (3, 32, 32)) - count_flops(pruned, (3, 32, 32)) == flops


def test_pruned_last_channels_of_a_residual_block_are_added_into_the_stream():
    model = uniform_gammas_(torchvision.models.resnet18(weights=None), (3, 32, 32))
    with torch.no_grad():
        model.layer1[0].bn2.weight[:16] = 0.0
    pruned = assert_equivalent(model, 0.2, (3, 32, 32))
    assert pruned.get_submodule("layer1.0.conv2").out_channels == 48
    add = pruned.get_submodule("add_index_add")  # the stream holds all 64: it takes the 48 in place
    assert isinstance(add, ChannelAdd) and add.in_place and add.index.tolist() == list(range(16, 64))
    assert not any(isinstance(m, ChannelScatter) for m in pruned.modules())
    # 32×32 input: layer1 at 8×8; only conv2 loses 16 of its 64 outputs
    assert count_flops(model, (3, 32, 32)) - count_flops(pruned, (3, 32, 32)) == 16 * 64 * 9 * 64


def test_a_channel_every_producer_of_a_stream_removes_leaves_the_stream():
    # ResNet-20: stage 1's stream is made by the stem and three blocks' bn2; stage 2's by its
    # blocks' bn2 and stage 1's stream, subsampled and zero-padded from 16 to 32 channels (option A).
    from trainers.models import build

    model = uniform_gammas_(build("resnet20", num_classes=10), (3, 32, 32))
    with torch.no_grad():
        for bn in [model.bn1, *(block.bn2 for block in model.layer1)]:
            bn.weight[:4] = 0.0
        for bn in (block.bn2 for block in model.layer2):
            bn.weight[:4] = 0.0
    pruned = assert_equivalent(model, 0.2, (3, 32, 32))
    assert [pruned.get_submodule(f"layer1.{i}.conv1").in_channels for i in range(3)] == [12, 12, 12]
    assert pruned.get_submodule("layer2.0.conv1").in_channels == 12
    # stage 2 holds channels 4..15 of the padded stage-1 stream and 4..31 of its own blocks
    assert [pruned.get_submodule(f"layer2.{i}.conv1").in_channels for i in (1, 2)] == [28, 28]
    assert pruned.get_submodule("layer3.0.conv1").in_channels == 28
    assert not any(isinstance(m, ChannelScatter) for m in pruned.modules())


class ReadAgain(nn.Module):
    """A residual addition whose full operand is read again after it: it must not be added into."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv_b, self.bn_b = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv_c = nn.Conv2d(6, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn_a(self.conv_a(x)))
        z = y + self.bn_b(self.conv_b(x))
        return self.conv_c(z) * y


def test_an_operand_read_after_the_addition_is_not_added_into():
    net = uniform_gammas_(ReadAgain(), (3, 8, 8))
    with torch.no_grad():
        net.bn_b.weight[[0, 3]] = 0.0
    pruned = assert_equivalent(net, 0.2, (3, 8, 8))
    adds = [m for m in pruned.modules() if isinstance(m, ChannelAdd)]
    assert len(adds) == 1 and not adds[0].in_place and adds[0].index.tolist() == [1, 2, 4, 5]
    x = torch.randn(2, 3, 8, 8)
    before = x.clone()
    with torch.inference_mode():
        pruned(x)
    assert torch.equal(x, before)


def test_mobilenet_channel_goes_only_when_both_of_its_bns_agree():
    model = uniform_gammas_(torchvision.models.mobilenet_v2(weights=None), (3, 32, 32))
    with torch.no_grad():
        model.features[2].conv[0][1].weight[0:10] = 0.0  # expansion BN
        model.features[2].conv[1][1].weight[5:15] = 0.0  # depthwise BN: both agree on 5..9
    pruned = assert_equivalent(model, 0.2, (3, 32, 32))
    assert pruned.get_submodule("features.2.conv.0.0").out_channels == 91  # of 96
    assert pruned.get_submodule("features.2.conv.1.0").groups == 91
    assert pruned.get_submodule("features.2.conv.2").in_channels == 91


# -- whole layers gone, and everything gone ------------------------------------------------------
def small_vgg() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


def test_a_whole_plain_layer_gone_keeps_one_channel_to_carry_the_shape():
    # with every channel of layer 3 gone, layer 7's biases are a constant that the padded 3×3 conv
    # 10 turns into a border pattern: layer 3 keeps one (zeroed) channel to give it a shape. The
    # output no longer depends on the input, but must still be the masked model's.
    net = uniform_gammas_(small_vgg(), (3, 8, 8))
    with torch.no_grad():
        net[4].weight.zero_()
    pruned = prune(net, 0.2, (3, 8, 8))
    assert pruned.get_submodule("3").out_channels == 1 and pruned.get_submodule("4").num_features == 1
    reference = masked(net, 0.2).eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        want, got = reference(x), pruned(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("model_fn", [small_vgg, TinyNet, lambda: torchvision.models.resnet18(weights=None)])
def test_threshold_above_every_gamma_still_gives_the_masked_model(model_fn):
    net = uniform_gammas_(model_fn(), (3, 16, 16))
    pruned = prune(net, 2.0, (3, 16, 16))
    reference = masked(net, 2.0).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want, got = reference(x), pruned(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * want.abs().max() + 1e-6
    assert count_flops(pruned, (3, 16, 16)) < count_flops(net, (3, 16, 16))


# -- the pruned model is a model: training, gradients, saving ------------------------------------
def test_pruned_model_trains_like_the_masked_model(tmp_path):
    model = polarize_(torchvision.models.resnet18(weights=None), (3, 32, 32))
    pruned = prune(model, THRESHOLD, (3, 32, 32)).train()
    reference = masked(model, THRESHOLD).train()
    x = torch.randn(4, 3, 32, 32)
    want, got = reference(x), pruned(x)  # batch statistics: removed channels play no part
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    got.square().mean().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in pruned.parameters())
    torch.save(pruned, tmp_path / "pruned.pt")
    loaded = torch.load(tmp_path / "pruned.pt", weights_only=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned.eval()(x))


def test_a_pruned_model_prunes_again_like_the_original():
    model = uniform_gammas_(torchvision.models.resnet18(weights=None), (3, 32, 32))
    with torch.no_grad():
        model.layer1[0].bn1.weight.zero_()
        model.layer2[1].bn2.weight[:50] = 0.01
        model.layer3[0].bn1.weight[:100] = 0.05
    once = prune(model, 0.02, (3, 32, 32))
    twice = prune(once, 0.1, (3, 32, 32))
    assert count_flops(twice, (3, 32, 32)) == count_flops(prune(model, 0.1, (3, 32, 32)), (3, 32, 32))
    reference = masked(model, 0.1).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want, got = reference(x), twice(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pruning_on_the_gpu_stays_on_the_gpu():
    model = polarize_(torchvision.models.mobilenet_v2(weights=None), (3, 32, 32)).cuda()
    pruned = prune(model, THRESHOLD, (3, 32, 32))
    assert all(t.is_cuda for t in [*pruned.parameters(), *pruned.buffers()])
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        want, got = masked(model, THRESHOLD)(x), pruned(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [-0.1, float("nan"), "0.1", None])
def test_a_bad_threshold_raises(threshold):
    with pytest.raises(ValueError, match="threshold"):
        prune(TinyNet(), threshold, (3, 8, 8))
    with pytest.raises(ValueError, match="threshold"):
        masked(TinyNet(), threshold)


@pytest.mark.parametrize("shape", [(4, 8, 8), (3,), (3, 0, 8)])
def test_an_input_shape_that_does_not_fit_raises(shape):
    with pytest.raises(ValueError, match="input shape"):
        prune(TinyNet(), THRESHOLD, shape)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) if x.sum() > 0 else x


def test_a_model_torch_fx_cannot_trace_raises():
    with pytest.raises(ValueError, match="cannot trace Branchy"):
        prunable_bns(Branchy())
    with pytest.raises(ValueError, match="cannot trace Branchy"):
        prune(Branchy(), THRESHOLD, (3, 8, 8))
