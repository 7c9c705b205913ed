"""The baselines of the paper's Table 3 against hand counts (issue 11): uniform width's FLOPs,
Network Slimming's percentile threshold, and the config checks that keep each baseline whole."""

from __future__ import annotations

import pytest
import torch

from pruning.flops import count_flops
from pruning.prunable import prunable_bns
from pruning.surgery import masked
from trainers import models
from trainers.baselines import percentile_threshold, slimming_threshold, uniform_width
from trainers.config import Config, ConfigError


def conv(c_in: int, c_out: int, side: int, k: int = 3) -> int:
    return c_in * c_out * k * k * side * side


def test_uniform_resnet20_flops_equal_a_hand_count() -> None:
    # width 0.5: stages of 8, 16, 32 channels at 32, 16, 8 pixels; a stride-2 conv opens stages 2, 3.
    hand = (conv(3, 8, 32) + 6 * conv(8, 8, 32)
            + conv(8, 16, 16) + 5 * conv(16, 16, 16)
            + conv(16, 32, 8) + 5 * conv(32, 32, 8)
            + 32 * 10)  # fmt: skip
    assert hand == 10_248_512
    assert count_flops(models.build("resnet20", 10, width=0.5), (3, 32, 32)) == hand


def test_uniform_vgg16_flops_equal_a_hand_count() -> None:
    widths = [32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256]
    sides = [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
    hand = sum(conv(c_in, c_out, side) for c_in, c_out, side in zip([3, *widths[:-1]], widths, sides, strict=True))
    hand += 256 * 256 + 256 * 10  # the classifier, its hidden layer × 0.5 too
    assert count_flops(models.build("vgg16", 10, width=0.5), (3, 32, 32)) == hand


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_uniform_width_gives_the_asked_for_reduction(target: float) -> None:
    shape = (3, 16, 16)
    full = count_flops(models.build("resnet20", 10), shape)
    width = uniform_width("resnet20", 10, shape, target)
    reduction = 1 - count_flops(models.build("resnet20", 10, width=width), shape) / full
    assert reduction == pytest.approx(target, abs=0.01)


def test_a_model_without_a_width_multiplier_says_so() -> None:
    with pytest.raises(ValueError, match="no width multiplier"):
        models.build("resnet50", 10, width=0.5)
    with pytest.raises(ValueError, match="width must be > 0"):
        models.build("resnet20", 10, width=0.0)


def random_gammas_(model: torch.nn.Module, seed: int = 0) -> list[torch.nn.Module]:
    bns = prunable_bns(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.num_features, generator=g))  # distinct with probability 1
    return bns


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.55, 0.9])
def test_percentile_threshold_prunes_the_asked_for_fraction(fraction: float) -> None:
    model = models.build("resnet20", 10)
    bns = random_gammas_(model)
    n = sum(bn.num_features for bn in bns)
    threshold = percentile_threshold([bn.weight for bn in bns], fraction)
    reference = masked(model, threshold)
    zeroed = sum(int((bn.weight == 0).sum()) for bn in prunable_bns(reference))
    assert zeroed == int(n * fraction)


def test_slimming_threshold_is_the_smallest_percentile_that_reaches_the_target() -> None:
    shape = (3, 16, 16)
    model = models.build("resnet20", 10)
    bns = random_gammas_(model, seed=1)
    full = count_flops(model, shape)
    threshold, reduction = slimming_threshold(model, bns, 0.5, shape, full)
    assert reduction >= 0.5
    values = sorted(float(v) for bn in bns for v in bn.weight.detach())
    below = values[values.index(threshold) - 1]  # one channel fewer pruned
    from pruning.surgery import prune

    smaller = 1 - count_flops(prune(model, {bn: below for bn in bns}, shape), shape) / full
    assert smaller < 0.5


def test_each_baseline_needs_its_regularizer() -> None:
    assert Config(baseline="slimming", regularizer="l1").baseline == "slimming"
    assert Config(baseline="uniform", regularizer="none", baseline_flops=0.7).baseline_flops == 0.7
    with pytest.raises(ConfigError, match="needs regularizer l1"):
        Config(baseline="slimming")
    with pytest.raises(ConfigError, match="needs regularizer none"):
        Config(baseline="uniform")
    with pytest.raises(ConfigError, match="baseline_flops must be in"):
        Config(baseline="uniform", regularizer="none", baseline_flops=1.0)
    with pytest.raises(ConfigError, match="threshold_scope must be one of"):
        Config(threshold_scope="layer")
    with pytest.raises(ConfigError, match="prunable_set must be one of"):
        Config(prunable_set="paper")


# -- the options in a real trial (smoke data, 2 epochs) -------------------------------------------
@pytest.fixture(scope="module")
def smoke(cifar10_dir):
    from trainers.config import load_config
    from trainers.trial import load_splits

    config = load_config("smoke", {"data_dir": str(cifar10_dir), "epochs": 2, "max_epochs": 2, "min_epochs": 2})
    return config, load_splits(config, torch.device("cpu"))


def test_a_uniform_trial_trains_the_narrower_network_and_reports_its_f(smoke) -> None:
    import dataclasses

    from trainers.trial import run_trial

    config, splits = smoke
    config = dataclasses.replace(config, regularizer="none", baseline="uniform", baseline_flops=0.5)
    result = run_trial(config, 0.0, 1.2, splits=splits)
    shape = tuple(splits.input_shape)
    narrow = models.build("resnet20", 10, width=uniform_width("resnet20", 10, shape, 0.5))
    narrow.load_state_dict(result.model_state)  # the trial trained exactly this architecture
    full = count_flops(models.build("resnet20", 10), shape)
    assert result.flops_reduction == pytest.approx(1 - count_flops(narrow, shape) / full, abs=1e-12)
    assert result.flops_reduction == pytest.approx(0.5, abs=0.02) and result.threshold is None


def test_slimming_and_per_layer_authors_trials_prune_by_their_rule(smoke) -> None:
    import dataclasses

    from pruning.surgery import prune
    from trainers.pruning_rule import pruning_threshold
    from trainers.trial import run_trial

    config, splits = smoke
    shape = tuple(splits.input_shape)
    slim = dataclasses.replace(config, regularizer="l1", baseline="slimming", baseline_flops=0.4)
    assert 0.4 <= run_trial(slim, 1e-2, 1.2, splits=splits).flops_reduction < 0.45

    authors = dataclasses.replace(config, threshold_scope="per_layer", prunable_set="authors")
    result = run_trial(authors, 4e-2, 1.2, splits=splits)
    model = models.build("resnet20", 10)
    model.load_state_dict(result.model_state)
    bns = prunable_bns(model, "authors")
    chosen = pruning_threshold(bns, authors)
    assert model.bn1 not in chosen  # the stem is never pruned in the authors' set
    recount = 1 - count_flops(prune(model, chosen, shape), shape) / count_flops(model, shape)
    assert recount == pytest.approx(result.flops_reduction, abs=1e-12) and recount > 0
