"""The trial on real data (the smoke preset): F per epoch, the stable-F stop, failure, resume."""

import dataclasses
import math

import pytest
import torch

from pruning.flops import count_flops
from pruning.prunable import scaling_factors
from pruning.surgery import prune
from trainers import models
from trainers.config import load_config, preset_section
from trainers.trial import CHECKPOINT, is_stable, load_splits, pruning_threshold, run_trial

SMOKE_LAM = preset_section("smoke")["lam_high"]  # large enough that the smoke trials prune

REPORTED = {"epoch", "flops_reduction", "threshold", "val_accuracy", "loss", "lam", "t"}


@pytest.fixture(scope="module")
def smoke(cifar10_dir):
    config = load_config("smoke", {"data_dir": str(cifar10_dir), "epochs": 6, "max_epochs": 6})
    return config, load_splits(config, torch.device("cpu"))


def _without_timing(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in history]


def test_the_trial_reports_every_epoch_and_stops_when_f_is_stable(smoke):
    config, splits = smoke
    reported = []
    result = run_trial(config, SMOKE_LAM, 1.2, report=reported.append, splits=splits)

    assert result.status == "stable" and result.epochs < config.max_epochs
    assert reported == result.history and len(reported) == result.epochs
    assert [r["epoch"] for r in reported] == list(range(1, result.epochs + 1))
    for r in reported:
        assert REPORTED <= set(r)
        assert 0.0 <= r["flops_reduction"] <= 1.0 and 0.0 <= r["val_accuracy"] <= 1.0
        assert r["threshold"] is None or 0.0 <= r["threshold"] < 1.0
    # the rule: the last patience + 1 values of F lie within f_tol, and at no earlier epoch did they
    fs = [r["flops_reduction"] for r in reported]
    assert max(fs[-config.patience - 1 :]) - min(fs[-config.patience - 1 :]) <= config.f_tol
    assert not any(is_stable(result.history[:k], config) for k in range(result.epochs))
    assert result.epochs >= max(config.min_epochs, config.patience + 1)
    assert result.flops_reduction == fs[-1] > 0.3  # this λ prunes (the smoke preset's λ_high)

    # F recounted independently from the returned weights: threshold, surgery, FLOPs
    model = models.build(config.model, splits.num_classes)
    model.load_state_dict(result.model_state)
    threshold = pruning_threshold(scaling_factors(model), config)
    assert threshold == result.threshold
    shape = splits.input_shape
    recount = 1 - count_flops(prune(model, threshold, shape), shape) / count_flops(model, shape)
    assert recount == pytest.approx(result.flops_reduction, abs=1e-12)


def test_without_stability_the_trial_runs_to_max_epochs(smoke):
    config, splits = smoke
    config = dataclasses.replace(config, max_epochs=3, min_epochs=3, patience=5)
    result = run_trial(config, 1e-3, 1.2, splits=splits)
    assert result.status == "max_epochs" and result.epochs == 3


def test_a_diverging_trial_fails_without_raising(smoke, tmp_path):
    config, splits = smoke
    reported = []
    result = run_trial(dataclasses.replace(config, lr=1e6), SMOKE_LAM, 1.2, report=reported.append,
                       splits=splits)  # fmt: skip
    assert result.status == "failed" and math.isnan(result.flops_reduction)
    assert "diverged" in result.message and result.model_state is None
    assert result.history == reported
    warm = dataclasses.replace(config, lr=1e6, warm_start_epochs=1, cache_dir=str(tmp_path))
    result = run_trial(warm, SMOKE_LAM, 1.2, splits=splits)  # the baseline itself diverges
    assert result.status == "failed" and result.message.startswith("warm-start baseline: training diverged")


class _Killed(Exception):
    pass


def _kill_after(epochs: int):
    def report(record):
        if record["epoch"] == epochs:
            raise _Killed

    return report


def test_a_killed_trial_resumes_to_the_same_history(smoke, tmp_path):
    config, splits = smoke
    config = dataclasses.replace(config, max_epochs=4, min_epochs=4)  # no early stop: 4 epochs
    lam, t = 1e-2, 1.2
    straight = run_trial(config, lam, t, splits=splits)
    assert straight.epochs == 4

    with pytest.raises(_Killed):  # killed after epoch 2 (its checkpoint is written)
        run_trial(config, lam, t, report=_kill_after(2), checkpoint_dir=tmp_path / "a", splits=splits)
    reported = []
    resumed = run_trial(config, lam, t, report=reported.append, checkpoint_dir=tmp_path / "a", splits=splits)
    assert [r["epoch"] for r in reported] == [3, 4] and "resumed from epoch 2" in resumed.message
    assert _without_timing(resumed.history) == _without_timing(straight.history)
    for name, value in straight.model_state.items():
        assert torch.equal(value, resumed.model_state[name]), name

    # a trial asked for 2 epochs, then for 4, continues too
    short = dataclasses.replace(config, max_epochs=2, min_epochs=2)
    assert run_trial(short, lam, t, checkpoint_dir=tmp_path / "b", splits=splits).epochs == 2
    longer = run_trial(config, lam, t, checkpoint_dir=tmp_path / "b", splits=splits)
    assert _without_timing(longer.history) == _without_timing(straight.history)

    # another λ does not resume from this checkpoint
    assert (tmp_path / "b" / CHECKPOINT).is_file()
    other = run_trial(short, 2e-2, t, checkpoint_dir=tmp_path / "b", splits=splits)
    assert "started over" in other.message and other.history[0]["lam"] == 2e-2


def test_warm_start_trains_the_baseline_once_and_caches_it(smoke, tmp_path):
    config, splits = smoke
    config = dataclasses.replace(config, warm_start_epochs=1, max_epochs=1, min_epochs=1,
                                 cache_dir=str(tmp_path / "cache"))  # fmt: skip
    first = run_trial(config, 1e-2, 1.2, splits=splits)
    cached = list((tmp_path / "cache" / "baselines").glob("*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = run_trial(config, 1e-2, 1.2, splits=splits)
    assert cached[0].stat().st_mtime_ns == stamp
    assert _without_timing(first.history) == _without_timing(second.history)
    cold = run_trial(dataclasses.replace(config, warm_start_epochs=0), 1e-2, 1.2, splits=splits)
    assert cold.history[0]["loss"] > first.history[0]["loss"]  # the baseline had learnt something
