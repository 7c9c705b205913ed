"""BN folding against its independent truths: a hand-computed layer, and the unfolded model in eval mode."""

from __future__ import annotations

import pytest
import torch
import torchvision
from test_surgery import THRESHOLD, ReadAgain, polarize_, registered_models, uniform_gammas_
from torch import nn

from pruning.fold import fold_bn, for_inference
from pruning.layers import ChannelAdd
from pruning.surgery import masked, prune


def test_one_folded_channel_by_hand():
    # y = γ·(2x − μ)/√(σ² + ε) + β with μ = 1, σ² = 3, ε = 1, γ = 4, β = 5: y = 4x + 3
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1, eps=1.0)).eval()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[1].running_mean.fill_(1.0)
        model[1].running_var.fill_(3.0)
        model[1].weight.fill_(4.0)
        model[1].bias.fill_(5.0)
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert folded.get_submodule("0").weight.item() == 4.0 and folded.get_submodule("0").bias.item() == 3.0
    x = torch.tensor([[[[0.5]]], [[[-2.0]]]])
    torch.testing.assert_close(folded(x), 4 * x + 3)


class SharedOutput(nn.Module):
    """A conv whose output a BN and another op both read: the BN cannot fold into it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_bn_whose_input_is_read_elsewhere_stays():
    model = polarize_(SharedOutput(), (3, 8, 8), low=0.0)
    folded = fold_bn(model)
    assert isinstance(folded.get_submodule("bn"), nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


@pytest.mark.parametrize("name", registered_models())
def test_folded_pruned_models_give_the_pruned_models_output(name):
    from trainers.models import build, input_size

    side = min(input_size(name), 32)
    model = polarize_(build(name, num_classes=10), (3, side, side))
    pruned = prune(model, THRESHOLD, (3, side, side)).eval()
    folded = fold_bn(pruned)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = pruned(x), folded(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()  # float32 rounding over 50 layers: ~3e-5
    assert pruned.training is False and any(isinstance(m, nn.BatchNorm2d) for m in pruned.modules())


def _inference_form_gives_the_masked_output(model: nn.Module, side: int) -> None:
    """for_inference of the pruned model and of the dense one: the masked and the dense model's output."""
    shape = (3, side, side)
    pruned = prune(model, THRESHOLD, shape).eval()
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    before = x.clone()
    for network, reference in ((pruned, masked(model, THRESHOLD)), (model, model)):
        deployed = for_inference(network)
        kinds = (nn.BatchNorm2d, nn.Identity, nn.Dropout, ChannelAdd)
        assert not any(isinstance(m, kinds) for m in deployed.modules())
        with torch.inference_mode():
            want, got = reference.eval()(x), deployed(x)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()  # BN folding's float32 rounding
    assert torch.equal(x, before)  # the in-place additions never write into the input


@pytest.mark.parametrize("name", registered_models())
def test_inference_form_of_registered_models_gives_the_masked_models_output(name):
    from trainers.models import build, input_size

    side = min(input_size(name), 32)
    _inference_form_gives_the_masked_output(polarize_(build(name, num_classes=10), (3, side, side)), side)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_inference_form_of_torchvision_models_gives_the_masked_models_output(name):
    _inference_form_gives_the_masked_output(
        polarize_(getattr(torchvision.models, name)(weights=None), (3, 32, 32)), 32
    )


def test_inference_form_keeps_an_addition_out_of_place_when_its_operand_is_read_again():
    net = uniform_gammas_(ReadAgain(), (3, 8, 8))
    with torch.no_grad():
        net.bn_b.weight[[0, 3]] = 0.0
    pruned = prune(net, 0.2, (3, 8, 8)).eval()
    deployed = for_inference(pruned)
    assert [n.target for n in deployed.graph.nodes if n.op == "call_method"] == ["index_add"]
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(deployed(x), masked(net, 0.2).eval()(x), rtol=1e-4, atol=1e-5)
