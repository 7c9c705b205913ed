"""The config dataclass and its presets: defaults, preset and CLI overrides, one-line errors."""

import dataclasses
from pathlib import Path

import pytest

from trainers.config import Config, ConfigError, available_presets, cache_root, load_config

PAPER_PRESETS = ["cifar10-resnet56", "cifar10-vgg16", "cifar100-resnet56", "cifar100-vgg16",
                 "imagenet-resnet50", "imagenet-mobilenetv2"]  # fmt: skip


def test_defaults_are_the_papers_algorithm_and_regularizer_settings():
    c = load_config()
    assert c == Config()
    # §3.2: γ₀ = 0.5, a = 1; §3.3: bin 0.01 (Algorithm 1's own constants: tests/search/test_settings.py)
    assert (c.gamma_init, c.gamma_upper, c.bin_width) == (0.5, 1.0, 0.01)
    assert c.max_epochs == 30 and c.regularizer == "polarization"
    assert c.data_dir is None and c.num_classes is None and c.gamma_lr is None


def test_config_is_frozen_and_to_dict_is_plain():
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0  # type: ignore[misc]
    d = c.to_dict()
    assert d["lr_milestones"] == [0.5, 0.75] and set(d) == {f.name for f in dataclasses.fields(Config)}
    assert Config(**d) == c


def test_every_shipped_preset_loads_and_overrides_the_defaults():
    names = available_presets()
    assert set(PAPER_PRESETS + ["cpu-quick", "smoke"]) <= set(names)
    for name in names:
        assert isinstance(load_config(name), Config)
    c = load_config("cifar10-resnet56")
    assert (c.model, c.dataset, c.epochs, c.lr_schedule) == ("resnet56", "cifar10", 200, "step")
    assert c.weight_decay == 5e-4 and isinstance(c.weight_decay, float)  # "5.0e-4" in YAML
    assert load_config("imagenet-mobilenetv2").bn_weight_decay is False


def test_cli_overrides_beat_the_preset_and_none_means_not_given():
    c = load_config("cifar10-resnet56", {"lr": 0.05, "epochs": None, "data_dir": Path("/data")})
    assert c.lr == 0.05 and c.epochs == 200 and c.data_dir == "/data"
    assert load_config("cifar10-resnet56", {"model": "vgg16"}).model == "vgg16"


def test_a_preset_may_be_any_yaml_file_and_reads_1e_minus_4_as_a_number(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("# only overrides\nlr: 1e-2\nlr_milestones: [0.25, 0.5]\nepochs: 10\nmax_epochs: 5\n")
    c = load_config(path, {"seed": 3})
    assert (c.lr, c.lr_milestones, c.epochs, c.seed) == (0.01, (0.25, 0.5), 10, 3)
    assert load_config(str(path)).lr == 0.01
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config()


def test_int_widens_to_float_and_list_to_tuple():
    c = load_config(None, {"lr": 1, "lr_milestones": [1 / 3, 2 / 3]})
    assert isinstance(c.lr, float) and c.lr_milestones == (1 / 3, 2 / 3)


def test_cache_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("POLARSEARCH_CACHE", str(tmp_path / "env"))
    assert cache_root(Config()) == tmp_path / "env"
    assert cache_root(Config(cache_dir=str(tmp_path / "own"))) == tmp_path / "own"
    monkeypatch.delenv("POLARSEARCH_CACHE")
    assert cache_root(Config()) == Path.home() / ".cache" / "polarsearch"


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("preset", "overrides", "expected"),
    [
        ("no-such-preset", None, "unknown preset 'no-such-preset' (available: cifar10-resnet56"),
        ("missing/file.yaml", None, "preset file 'missing/file.yaml' not found"),
        (None, {"lrr": 0.1}, "unknown config field 'lrr' in overrides; did you mean 'lr'?"),
        (None, {"lr": "fast"}, "lr must be a number, got str 'fast'"),
        (None, {"lr": "1e-3"}, "lr must be a number, got str '1e-3'"),
        (None, {"epochs": 2.5}, "epochs must be an integer, got float 2.5"),
        (None, {"epochs": True}, "epochs must be an integer, got bool True"),
        (None, {"download": "yes"}, "download must be true/false, got str 'yes'"),
        (None, {"lr_milestones": "0.5"}, "lr_milestones must be a list of numbers, got str '0.5'"),
        (None, {"lr_milestones": [0.75, 0.5]}, "lr_milestones must be increasing fractions"),
        (None, {"lr": -0.1}, "lr must be > 0, got -0.1"),
        (None, {"lr": float("inf")}, "lr must be a finite number, got inf"),
        (None, {"lr_schedule": "linear"}, "lr_schedule must be one of cosine, step, got 'linear'"),
        (None, {"regularizer": "l2"}, "regularizer must be one of polarization, l1, none, got 'l2'"),
        (None, {"device": "gpu"}, "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
        (None, {"max_epochs": 300}, "max_epochs (300) must be <= epochs (200)"),
        (None, {"gamma_init": 2.0}, "gamma_init must be in [0, gamma_upper], got 2.0"),
        (None, {"lam_high": 2e-4}, "unknown config field 'lam_high' in overrides"),  # a search setting
    ],
)
def test_errors_are_one_line(preset, overrides, expected):
    with pytest.raises(ConfigError) as error:
        load_config(preset, overrides)
    message = str(error.value)
    assert message.startswith(expected) and "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lr: [0.1\n", "preset p.yaml is not valid YAML at line"),
        ("- lr\n- 0.1\n", "preset p.yaml must be a mapping of field: value, got a list"),
        ("learning_rate: 0.1\n", "unknown config field 'learning_rate' in preset p.yaml"),
        ("lr: null\n", "lr must not be empty (null)"),
    ],
)
def test_bad_preset_files_are_one_line_errors(tmp_path, text, expected):
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, text))
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_config_error_is_a_value_error_and_direct_construction_is_checked_too():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match="patience must be >= 1"):
        Config(patience=0)
    with pytest.raises(ConfigError, match="momentum must be in"):
        dataclasses.replace(Config(), momentum=1.0)
