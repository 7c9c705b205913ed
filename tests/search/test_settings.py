"""The search settings: one frozen object, the paper's constants as defaults, validated once, and
the precedence defaults < preset `search:` section < flags."""

from __future__ import annotations

import dataclasses

import pytest

from search.settings import SearchSettings, SettingsError, settings_from
from search.strategies.algorithm1 import LAM_HIGH, LAM_LOW, T_INIT, T_STEP
from trainers.config import ConfigError, load_config, preset_section


def test_defaults_are_algorithm_1s_initialisation():
    s = SearchSettings(target=0.5)
    # the paper's Algorithm 1: (λ_l, λ_u, t) = (0, 2e-4, 1.2), t moves by 0.1
    assert (LAM_LOW, LAM_HIGH, T_INIT, T_STEP) == (0.0, 2e-4, 1.2, 0.1)
    assert (s.lam_low, s.lam_high, s.t_init, s.t_step) == (0.0, 2e-4, 1.2, 0.1)
    assert (s.delta, s.strategy, s.parallel) == (0.05, "algorithm1", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.target = 0.3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"target": 1.0}, "target FLOPs reduction must be in (0, 1)"),
        ({"target": 0.5, "delta": 0.5}, "delta must be in (0, target=0.5)"),
        ({"target": 0.5, "lam_low": 1e-3, "lam_high": 1e-4}, "need 0 <= lam_low < lam_high"),
        ({"target": 0.5, "t_step": 0.0}, "t_step must be > 0"),
        ({"target": 0.5, "max_trials": 0}, "max_trials must be >= 1"),
        ({"target": 0.5, "strategy": "grid"}, "unknown strategy 'grid'"),
        ({"target": 0.5, "parallel": 2}, "algorithm1 runs one trial at a time"),
        ({"target": float("nan")}, "target must be a finite number"),
        ({"target": 0.5, "max_trials": 2.5}, "max_trials must be an integer"),
        ({"target": True}, "target must be a finite number"),
    ],
)
def test_each_bad_value_is_one_line(fields, words):
    with pytest.raises(SettingsError) as error:
        SearchSettings(**fields)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_presets_carry_a_search_section_that_the_config_ignores():
    section = preset_section("cpu-quick")
    assert section == {"lam_low": 0.0, "lam_high": 2e-3, "t_init": 1.2, "t_step": 0.1, "max_trials": 10}
    config = load_config("cpu-quick")
    assert not any(hasattr(config, k) for k in section)  # the trainer's Config has no search fields
    settings = settings_from({**section, "target": 0.5, "max_trials": 4})  # a flag over the preset
    assert (settings.lam_high, settings.max_trials) == (2e-3, 4)
    assert preset_section(None) == {} and preset_section("smoke")["lam_high"] == 4e-2


def test_a_preset_section_with_a_wrong_key_or_shape_is_refused(tmp_path):
    (tmp_path / "p.yaml").write_text("model: resnet20\nsearch:\n  lamda_high: 1e-3\n")
    with pytest.raises(SettingsError, match="unknown search setting 'lamda_high'"):
        settings_from({**preset_section(str(tmp_path / "p.yaml")), "target": 0.5})
    (tmp_path / "q.yaml").write_text("search: [1, 2]\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        preset_section(str(tmp_path / "q.yaml"))
    with pytest.raises(SettingsError, match="target FLOPs reduction is required"):
        settings_from({})
