"""BN folding against its independent truths: a hand-computed layer, and the unfolded model in eval mode."""

from __future__ import annotations

import pytest
import torch
from test_surgery import THRESHOLD, polarize_, registered_models
from torch import nn

from pruning.fold import fold_bn
from pruning.surgery import prune


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
