"""The networks the speed bench times (bench/speed_variants.py): γ near 0 only where the prunable set
says, and the F it was asked for, counted independently on the pruned network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import speed_variants as sv  # noqa: E402

from pruning.prunable import prunable_bns  # noqa: E402
from trainers.models import build  # noqa: E402

SHAPE = (3, 32, 32)


@pytest.mark.parametrize("prunable_set", ["all", "authors"])
def test_polarized_sets_gamma_only_in_the_chosen_bns_and_reaches_the_target(prunable_set):
    dense = build("resnet20", num_classes=10).eval()
    model = sv.polarized(dense, 0.4, seed=0, shape=SHAPE, prunable_set=prunable_set)
    chosen = {id(bn) for bn in prunable_bns(model, prunable_set)}
    small = 0
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        if id(bn) in chosen:
            small += int((bn.weight.abs() < sv.THRESHOLD).sum())
        else:
            assert torch.equal(bn.weight, torch.ones_like(bn.weight))  # untouched: the init value
    assert small > 0
    if prunable_set == "authors":  # the stem is never pruned in the authors' CIFAR ResNets
        assert id(model.bn1) not in chosen
    f = sv.reduction(dense, sv.ours(model, SHAPE), SHAPE)
    assert abs(f - 0.4) < 0.05
