"""Per-layer thresholds (the authors' `search_threshold`, once per BN) and pruning with them (issue 11).

The truth for a layer's threshold is §3.3's rule applied by hand to that layer's γ alone: 100 bins
of width 0.01 over [0, 1], the first bin with a count ≤ both neighbours', its left edge. The truth
for pruning with a threshold per BN is the masked model with those thresholds.
"""

from __future__ import annotations

import random

import pytest
import torch

from pruning.prunable import prunable_bns
from pruning.surgery import masked, prune
from pruning.threshold import all_gammas, first_valley, per_layer_thresholds
from trainers import models
from trainers.config import Config
from trainers.pruning_rule import pruning_threshold

SHAPE = (3, 16, 16)


def polarize_(model: torch.nn.Module, input_shape, seed: int) -> torch.nn.Module:
    """γ near 0 for 40 % of the channels, in [0.3, 1] for the rest; random β; BN statistics measured
    on random inputs (as tests/pruning/test_surgery.py does)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            n = bn.num_features
            bn.weight.copy_(torch.where(torch.rand(n, generator=g) < 0.4, 0.05 * torch.rand(n, generator=g),
                                        0.3 + 0.7 * torch.rand(n, generator=g)))  # fmt: skip
            bn.bias.copy_(0.1 * torch.randn(n, generator=g))
            bn.reset_running_stats()
            bn.momentum = None
        model.train()(torch.randn(8, *input_shape, generator=g))
    return model.eval()


def valley_by_hand(values: list[float]) -> float | None:
    counts = [0] * 100
    for v in values:
        v = abs(v)
        if v <= 1.0:
            counts[min(99, int(v * 100))] += 1
    for j in range(1, 99):
        if counts[j] <= counts[j - 1] and counts[j] <= counts[j + 1]:
            return j / 100
    return None


def layered_gammas_(model: torch.nn.Module, seed: int = 0) -> list[torch.nn.Module]:
    """Each prunable BN's γ: two clusters, the low one ending at a valley of its own (0.03-0.15)."""
    rng = random.Random(seed)
    bns = prunable_bns(model)
    with torch.no_grad():
        for bn in bns:
            n, edge = bn.num_features, rng.choice([0.03, 0.06, 0.09, 0.12, 0.15])
            low = [rng.uniform(0, edge - 0.011) for _ in range(n // 2)]
            high = [rng.uniform(0.4, 1.0) for _ in range(n - n // 2)]
            bn.weight.copy_(torch.tensor(low + high))
    return bns


def test_per_layer_threshold_is_the_first_valley_of_each_layer_alone() -> None:
    model = models.build("resnet20", 10)
    bns = layered_gammas_(model)
    expected = [valley_by_hand(bn.weight.tolist()) for bn in bns]
    assert per_layer_thresholds([bn.weight for bn in bns]) == pytest.approx(expected)
    chosen = pruning_threshold(bns, Config(threshold_scope="per_layer"))
    assert {bn: chosen[bn] for bn in bns if expected[bns.index(bn)] is not None} == chosen
    assert [chosen.get(bn) for bn in bns] == pytest.approx(expected)
    assert len(set(expected)) > 1  # the layers' valleys differ, so one global threshold cannot match them


def test_global_threshold_is_one_valley_of_all_gammas() -> None:
    model = models.build("resnet20", 10)
    bns = layered_gammas_(model)
    everything = [v for bn in bns for v in bn.weight.tolist()]
    assert pruning_threshold(bns, Config()) == pytest.approx(valley_by_hand(everything))
    assert first_valley(all_gammas([bn.weight for bn in bns])) == pytest.approx(valley_by_hand(everything))


def test_a_layer_without_a_valley_keeps_all_its_channels() -> None:
    rising = torch.tensor([(j + 0.5) / 100 for j in range(100) for _ in range(j + 1)])  # j + 1 in bin j
    assert valley_by_hand(rising.tolist()) is None
    assert per_layer_thresholds([rising]) == [None]
    no_valley, bimodal = torch.nn.BatchNorm1d(len(rising)), torch.nn.BatchNorm1d(4)
    with torch.no_grad():
        no_valley.weight.copy_(rising)
        bimodal.weight.copy_(torch.tensor([0.001, 0.002, 0.8, 0.9]))
    assert pruning_threshold([no_valley, bimodal], Config(threshold_scope="per_layer")) == {bimodal: 0.01}


@pytest.mark.parametrize("name", ["resnet20", "vgg16", "mobilenet_v2"])
def test_pruning_with_per_bn_thresholds_equals_masking_with_them(name: str) -> None:
    model = polarize_(models.build(name, 10), SHAPE, seed=3)
    bns = prunable_bns(model)
    rng = random.Random(1)
    # A threshold per BN, one BN left out (it keeps every channel), one given by name.
    thresholds = {bn: rng.choice([0.02, 0.05, 0.2, 0.5]) for bn in bns[:-1]}
    thresholds.pop(bns[1])
    by_name = dict(thresholds)
    named = {id(m): n for n, m in model.named_modules()}
    by_name[named[id(bns[2])]] = by_name.pop(bns[2])
    pruned = prune(model, by_name, SHAPE)
    reference = masked(model, thresholds).eval()
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = reference(x), pruned.eval()(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    for bn in bns:  # masked: exactly the channels below their own BN's threshold
        copy = reference.get_submodule(named[id(bn)])
        small = bn.weight.abs() < thresholds.get(bn, 0.0)
        assert torch.equal(copy.weight == 0, small | (bn.weight == 0))


def test_a_bn_left_out_of_the_mapping_keeps_its_width() -> None:
    model = polarize_(models.build("resnet20", 10), SHAPE, seed=4)
    bns = prunable_bns(model)
    kept = bns[1]  # layer1.0.bn1: its own space (conv1 of the first block)
    pruned = prune(model, {bn: 0.2 for bn in bns if bn is not kept}, SHAPE)
    assert pruned.get_submodule("layer1.0.bn1").num_features == kept.num_features
    assert pruned.get_submodule("layer1.1.bn1").num_features < bns[3].num_features


def test_a_threshold_for_a_module_that_is_not_a_bn_is_an_error() -> None:
    model = models.build("resnet20", 10)
    with pytest.raises(ValueError, match="not a BN layer"):
        prune(model, {model.conv1: 0.1}, SHAPE)
    with pytest.raises(ValueError, match=">= 0"):
        masked(model, {model.bn1: -1.0})
