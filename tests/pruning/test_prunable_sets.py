"""The authors' prunable sets against the exact layer names their code prunes (issue 11).

github.com/polarizationpruning/PolarizationPruning: cifar/models/resnet_expand.py (each
BasicBlock's bn1, bn2; never the stem), cifar/models/vgg.py (every VGGBlock's BN, the linear one
included), imagenet/models/resnet_expand.py + imagenet/main.py (bn1, bn2 polarized; bn1-bn3
pruned; downsample never). The names below are written out by hand, not derived from the code.
"""

from __future__ import annotations

import pytest
from torch import nn

from pruning.prunable import polarized_bns, prunable_bns
from trainers import models


def names(model: nn.Module, bns: list[nn.Module]) -> list[str]:
    by_id = {id(m): n for n, m in model.named_modules()}
    return [by_id[id(bn)] for bn in bns]


@pytest.mark.parametrize(("name", "blocks"), [("resnet20", 3), ("resnet56", 9)])
def test_cifar_resnet_authors_set_is_every_blocks_bn1_and_bn2(name: str, blocks: int) -> None:
    model = models.build(name, 10)
    expected = [f"layer{s}.{b}.bn{i}" for s in (1, 2, 3) for b in range(blocks) for i in (1, 2)]
    assert names(model, prunable_bns(model, "authors")) == expected
    assert names(model, polarized_bns(model, "authors")) == expected
    assert names(model, prunable_bns(model, "all")) == ["bn1", *expected]  # "all" adds the stem


def test_vgg16_authors_set_is_every_bn_the_linear_one_included() -> None:
    model = models.build("vgg16", 10)
    # conv, BN, ReLU per conv layer, one module per max pool: 64 64 M 128 128 M 256×3 M 512×3 M 512×3
    conv_bns = [1, 4, 8, 11, 15, 18, 21, 25, 28, 31, 35, 38, 41]
    expected = [f"features.{i}" for i in conv_bns] + ["classifier.1"]
    assert names(model, prunable_bns(model, "authors")) == expected
    assert names(model, polarized_bns(model, "authors")) == expected
    assert names(model, prunable_bns(model, "all")) == expected


def test_resnet50_authors_set_polarizes_bn1_bn2_prunes_bn3_never_the_downsample() -> None:
    model = models.build("resnet50", 10)
    blocks = [(s, b) for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3), strict=True) for b in range(n)]
    assert names(model, prunable_bns(model, "authors")) == [f"layer{s}.{b}.bn{i}" for s, b in blocks
                                                            for i in (1, 2, 3)]  # fmt: skip
    assert names(model, polarized_bns(model, "authors")) == [f"layer{s}.{b}.bn{i}" for s, b in blocks
                                                             for i in (1, 2)]  # fmt: skip
    everything = set(names(model, prunable_bns(model, "all")))
    assert everything - set(names(model, prunable_bns(model, "authors"))) == {
        "bn1", *(f"layer{s}.0.downsample.1" for s in (1, 2, 3, 4))}


def test_mobilenet_v2_authors_set_leaves_out_the_stem_and_the_last_conv() -> None:
    model = models.build("mobilenet_v2", 10)
    authors = set(names(model, prunable_bns(model, "authors")))
    left_out = set(names(model, prunable_bns(model, "all"))) - authors
    assert left_out == {"features.0.1", "features.1.conv.0.1", "features.18.1"}
    assert {"features.1.conv.2", "features.2.conv.0.1", "features.2.conv.1.1", "features.2.conv.3"} <= authors


def test_authors_set_of_an_unknown_family_is_an_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(__import__("torch").zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="no authors' prunable set"):
        prunable_bns(model, "authors")
    with pytest.raises(ValueError, match="prunable_set must be one of"):
        prunable_bns(models.build("resnet20", 10), "some")
