"""Conv + linear multiply-adds against hand counts and torchvision's published tables."""

import pytest
import torch
import torchvision
from torch import nn

from pruning.flops import count_flops, flops_reduction


def _hand_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8·3·9 · 8·8 = 13,824
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),  # 16·8·9 · 4·4 = 18,432
        nn.Conv2d(16, 16, 3, padding=1, groups=4),  # 16·4·9 · 16 = 9,216
        nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise: 16·1·9 · 16 = 2,304
        nn.Conv2d(16, 32, 1),  # 32·16 · 16 = 8,192
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),  # 320
    )


def test_hand_built_network():
    assert count_flops(_hand_net(), (3, 8, 8)) == 13_824 + 18_432 + 9_216 + 2_304 + 8_192 + 320


def test_counting_leaves_the_model_as_it_was():
    net = _hand_net().train()
    before = net[1].running_mean.clone()
    count_flops(net, (3, 8, 8))
    assert net.training
    torch.testing.assert_close(net[1].running_mean, before)
    assert int(net[1].num_batches_tracked) == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet50", 4_089_184_256), ("mobilenet_v2", 300_774_272)],
)
def test_torchvision_tables(name, expected):
    model = getattr(torchvision.models, name)(weights=None)
    assert count_flops(model, (3, 224, 224)) == expected


def test_flops_reduction_of_a_halved_network():
    wide = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 8, 1, bias=False))  # 24+64 per pixel
    narrow = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(4, 8, 1, bias=False))  # 12+32
    assert flops_reduction(wide, narrow, (3, 5, 5)) == pytest.approx(1 - 44 / 88)


@pytest.mark.parametrize("shape", [(4, 8, 8), (3,), (3, 0, 8)])
def test_shape_that_does_not_fit_raises(shape):
    with pytest.raises(ValueError, match="shape"):
        count_flops(_hand_net(), shape)


def test_counts_a_torch_export_module_loaded_without_the_code(tmp_path):
    exported = torch.export.export(_hand_net().eval(), (torch.zeros(1, 3, 8, 8),))
    torch.export.save(exported, tmp_path / "net.pt2")
    loaded = torch.export.load(tmp_path / "net.pt2").module()  # refuses .eval(): fixed in its mode
    assert count_flops(loaded, (3, 8, 8)) == count_flops(_hand_net(), (3, 8, 8))
