"""The model registry: every model's FLOPs against the paper's numbers, architecture details, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning.flops import count_flops
from trainers.models import UnknownModel, available, build, input_size, register

# Conv + linear multiply-adds of the paper's networks (§4; torchvision's tables for ImageNet).
EXPECTED_FLOPS = {
    "resnet20": 40_551_040,
    "resnet56": 125_485_696,
    "vgg16": 313_463_808,
    "resnet50": 4_089_184_256,
    "mobilenet_v2": 300_774_272,
}
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def vgg16_flops_by_hand(side: int, num_classes: int) -> int:
    """Σ H·W·C_in·C_out·9 over the 13 convs, then Linear(512,512) and Linear(512,classes)."""
    total, c_in = 0, 3
    for item in VGG16_CFG:
        if item == "M":
            side //= 2
        else:
            total += side * side * c_in * item * 9
            c_in = item
    return total + 512 * 512 + 512 * num_classes


def test_every_registered_model_has_an_expected_flop_count():
    assert set(available()) == set(EXPECTED_FLOPS)
    assert available() == sorted(available())


@pytest.mark.parametrize("name", sorted(EXPECTED_FLOPS))
def test_flops_match_the_paper(name):
    num_classes = 10 if input_size(name) == 32 else 1000
    side = input_size(name)
    assert count_flops(build(name, num_classes), (3, side, side)) == EXPECTED_FLOPS[name]


def test_vgg16_flops_by_hand_formula():
    assert vgg16_flops_by_hand(32, 10) == 313_463_808  # the paper's 313.46M
    assert count_flops(build("vgg16", 10), (3, 32, 32)) == vgg16_flops_by_hand(32, 10)
    assert count_flops(build("vgg16", 100), (3, 32, 32)) == vgg16_flops_by_hand(32, 100)
    assert count_flops(build("vgg16", 10), (3, 16, 16)) == vgg16_flops_by_hand(16, 10)


def test_input_sizes():
    assert {n: input_size(n) for n in available()} == {
        "resnet20": 32,
        "resnet56": 32,
        "vgg16": 32,
        "resnet50": 224,
        "mobilenet_v2": 224,
    }


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16"])
@pytest.mark.parametrize("side", [32, 16])
def test_cifar_models_run_at_32_and_16_pixels(name, side):
    model = build(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, side, side)).shape == (2, 7)


def resnet_params_by_hand(n: int, num_classes: int = 10) -> int:
    """Conv weights + BN (γ, β) + linear of ResNet-(6n+2) with parameter-free shortcuts."""
    total = 3 * 16 * 9 + 2 * 16
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += c_in * width * 9 + width * width * 9 + 4 * width
            c_in = width
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize(("name", "n"), [("resnet20", 3), ("resnet56", 9)])
def test_cifar_resnet_parameter_count_has_no_shortcut_parameters(name, n):
    count = sum(p.numel() for p in build(name, 10).parameters())
    assert count == resnet_params_by_hand(n)  # 0.27M and 0.85M (He et al., §4.2)


def test_option_a_shortcut_subsamples_and_zero_pads():
    model = build("resnet20", 10).eval()
    block = model.layer2[0]  # 16 -> 32 channels, stride 2
    for bn in (block.bn1, block.bn2):  # non-trivial BN statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        residual = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        identity = torch.zeros(2, 32, 4, 4)
        identity[:, :16] = x[:, :, ::2, ::2]
        assert torch.allclose(block(x), F.relu(residual + identity), atol=1e-6)
        plain = model.layer1[1]  # same width, stride 1: identity shortcut
        residual = plain.bn2(plain.conv2(F.relu(plain.bn1(plain.conv1(x[:, :16])))))
        assert torch.allclose(plain(x[:, :16]), F.relu(residual + x[:, :16]), atol=1e-6)


def test_vgg16_layers_and_prunable_classifier():
    model = build("vgg16", 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [c for c in VGG16_CFG if c != "M"]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    head = list(model.classifier)
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (512, 512, 10)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16", "resnet50", "mobilenet_v2"])
def test_scaling_factors_are_not_preset(name):
    """γ starts at PyTorch's 1; the trainer sets 0.5 (§3.2) only when it polarizes."""
    bns = [m for m in build(name, 10).modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    assert bns and all(torch.all(bn.weight == 1) for bn in bns)


def test_convolutions_use_kaiming_fan_out_init():
    torch.manual_seed(0)
    conv = build("vgg16", 10).features[-3]  # 512 -> 512, 3x3: 2.4M weights
    expected = (2.0 / (512 * 9)) ** 0.5
    assert abs(conv.weight.std().item() / expected - 1) < 0.01
    conv = build("resnet56", 10).layer3[0].conv2
    assert abs(conv.weight.std().item() / (2.0 / (64 * 9)) ** 0.5 - 1) < 0.05


def test_build_uses_num_classes_and_returns_fresh_models():
    a, b = build("resnet20", 3), build("resnet20", 3)
    assert a.fc.out_features == 3 and a is not b
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


def test_unknown_model_lists_available_names():
    with pytest.raises(UnknownModel) as info:
        build("resnet18", 10)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert "resnet18" in message and all(name in message for name in available())
    assert "\n" not in message
    with pytest.raises(UnknownModel):
        input_size("nope")


def test_register_rejects_a_second_model_under_a_taken_name():
    before = available()
    with pytest.raises(ValueError, match="resnet20"):
        register("resnet20")(lambda num_classes: nn.Linear(1, num_classes))
    assert available() == before
    assert isinstance(build("resnet20", 10).layer1[0].conv1, nn.Conv2d)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        build("resnet20", 0)
