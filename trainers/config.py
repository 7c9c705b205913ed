"""One frozen, typed configuration for trials and final jobs, and its YAML presets.

A preset (`trainers/presets/<name>.yaml`, or any YAML file) holds only the fields it overrides;
the overrides given to `load_config` (the CLI's flags) override the preset. A preset may also hold
a `search:` section (the search's settings, read by `search.settings` through `preset_section`):

    config = load_config("cpu-quick", {"lr": 0.05, "seed": None})   # None = flag not given

Every value is checked when a `Config` is made (also by `dataclasses.replace`): ints are widened
to floats and lists to tuples where the field wants them, anything else of the wrong type or out
of range raises `ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
SECTION = "search"  # a preset's section of search settings (search.settings), not Config fields
SCHEDULES = ("cosine", "step")
REGULARIZERS = ("polarization", "l1", "none")
THRESHOLD_SCOPES = ("global", "per_layer")
PRUNABLE_SETS = ("all", "authors")  # pruning.prunable.PRUNABLE_SETS
BASELINES = ("none", "slimming", "uniform")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """A configuration a user wrote is wrong; the message is one line meant for them."""


@dataclass(frozen=True)
class Config:
    """Every setting of a trial and a final job, with defaults (§4.2)."""

    # --- data and model
    model: str = "resnet20"
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    num_classes: int | None = None  # None: the dataset's
    subset: int | None = None  # training images kept (stratified); None: all
    val_size: int = 0  # images held out of training for the trial's accuracy; 0: use the test split
    downsample: int = 1  # average-pool the images by this factor (2: CIFAR at 16×16)
    seed: int = 0
    device: str = "auto"  # auto: cuda when there is one, else cpu
    # --- optimisation (SGD with momentum, weight decay = the L2 term R(θ) of Eq. 1)
    batch_size: int = 64
    eval_batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bn_weight_decay: bool = True  # also decay BN γ and β (the authors' `--bn-wd`)
    lr_schedule: str = "cosine"  # cosine | step, stepped per iteration
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of `epochs`
    lr_decay: float = 0.1  # step schedule: factor at each milestone
    epochs: int = 200  # full polarized training of the final job
    finetune_epochs: int = 40
    finetune_lr: float = 0.01
    finetune_schedule: str | None = None  # None: lr_schedule
    finetune_milestones: tuple[float, ...] | None = None  # step schedule of the fine-tuning; None: lr_milestones
    finetune_decay: float | None = None  # its factor at each milestone; None: lr_decay
    # --- the polarization regularizer (§3.2)
    regularizer: str = "polarization"  # polarization | l1 | none
    gamma_upper: float = 1.0  # a, the upper bound of γ
    gamma_init: float = 0.5  # γ₀ ("initialised to 0.5")
    gamma_lr: float | None = None  # None: the same learning rate as the weights
    lam_warmup_epochs: int = 0  # λ ramps in linearly over these epochs; 0: full λ from the start
    # --- which γ, which threshold (pruning.prunable, pruning.threshold; the paper is silent, §3.3)
    threshold_scope: str = "global"  # global: one γ histogram of the network | per_layer: one per BN (authors)
    prunable_set: str = "all"  # all: every prunable BN | authors: the BNs the authors' code polarizes and prunes
    # --- the baselines of the paper's Table 3 (trainers.baselines); none: the paper's method
    baseline: str = "none"  # slimming: L1 + percentile threshold | uniform: every width × w, no pruning
    baseline_flops: float = 0.5  # the FLOPs reduction a baseline is asked for (percentile / width chosen to give it)
    # --- the trial: train until F is stable (§3.3)
    max_epochs: int = 30  # the paper's 30 epochs on ImageNet
    min_epochs: int = 5
    f_tol: float = 0.01  # F is stable when it moved by at most f_tol ...
    patience: int = 3  # ... over the last `patience` epochs
    bin_width: float = 0.01  # of the γ histogram whose first valley is the threshold
    warm_start_epochs: int = 0  # >0: trials start from a cached unregularized baseline
    cache_dir: str | None = None  # None: $POLARSEARCH_CACHE or ~/.cache/polarsearch
    # --- speed
    channels_last: bool = False
    amp: bool = False  # bf16 autocast, GPU only (ignored on CPU)
    compile: bool = False  # torch.compile, GPU only (ignored on CPU)
    num_workers: int = 4
    threads: int | None = None  # torch CPU threads; None: torch's default
    # data-parallel replicas (Ray Train, DDP; each with its share of the trial's or job's devices)
    workers_per_trial: int = 1
    final_workers: int = 1
    latency_runs: int = 20  # the final job's latency is the median of this many runs

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _coerce(field.name, getattr(self, field.name), hints[field.name])
            object.__setattr__(self, field.name, value)
        _check_values(self)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain Python values (tuples as lists), ready for JSON, YAML or MLflow."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


FIELDS = tuple(f.name for f in dataclasses.fields(Config))


def load_config(preset: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """The defaults, overridden by the preset (a name in `presets/` or a YAML path), then `overrides`.

    Overrides whose value is None are ignored (a CLI flag not given).
    """
    values: dict[str, Any] = {}
    if preset is not None:
        values.update(_read_preset(preset))
        values.pop(SECTION, None)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_keys(given, "overrides")
    values.update(given)
    return Config(**values)


def preset_section(preset: str | Path | None, name: str = "search") -> dict[str, Any]:
    """The `name:` section of a preset (a mapping; {} when there is none)."""
    if preset is None:
        return {}
    section = _read_preset(preset).get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"the {name}: section of preset {preset} must be a mapping of setting: value")
    return dict(section)


def available_presets() -> list[str]:
    """Names of the presets shipped in `trainers/presets/`."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def cache_root(config: Config) -> Path:
    """Where cached artefacts (warm-start baselines) live: cache_dir, $POLARSEARCH_CACHE, ~/.cache."""
    if config.cache_dir is not None:
        return Path(config.cache_dir).expanduser()
    env = os.environ.get("POLARSEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "polarsearch"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 2e-4 as a float (YAML 1.1 wants 2.0e-4 and would give a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _read_preset(preset: str | Path) -> dict[str, Any]:
    path = Path(preset)
    named = PRESETS_DIR / f"{preset}.yaml"
    if isinstance(preset, str) and "/" not in preset and not preset.endswith((".yaml", ".yml")):
        if not named.is_file():
            raise ConfigError(f"unknown preset {preset!r} (available: {', '.join(available_presets())})")
        path = named
    elif not path.is_file():
        raise ConfigError(f"preset file {str(path)!r} not found (presets: {', '.join(available_presets())})")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"preset {path.name} is not valid YAML{line}: {getattr(error, 'problem', error)}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read preset {path}: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path.name} must be a mapping of field: value, got a {type(data).__name__}")
    _check_keys({k: v for k, v in data.items() if k != SECTION}, f"preset {path.name}")
    return data


def _check_keys(values: dict[str, Any], where: str) -> None:
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config field {key!r} in {where}{hint}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` as the type `hint` wants (int→float, list→tuple, PathLike→str), or ConfigError."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{name} must not be empty (null)")
    for option in options:
        if option is type(None):
            continue
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}")
            return float(value)
        if option is str and isinstance(value, str | os.PathLike):
            return os.fspath(value)
        if typing.get_origin(option) is tuple and isinstance(value, list | tuple):
            return tuple(_coerce(f"{name}[{i}]", v, float) for i, v in enumerate(value))
    wanted = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{name} must be {wanted}, got {type(value).__name__} {value!r}")


def _type_name(option: Any) -> str:
    if option is type(None):
        return "null"
    if typing.get_origin(option) is tuple:
        return "a list of numbers"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(option, str(option))


def _check_values(c: Config) -> None:
    """Ranges and choices; the first violation raises ConfigError."""
    checks = [
        (bool(c.model), "model must be a model name"),
        (bool(c.dataset), "dataset must be a dataset name"),
        (c.num_classes is None or c.num_classes >= 2, f"num_classes must be >= 2, got {c.num_classes}"),
        (c.subset is None or c.subset >= 1, f"subset must be >= 1, got {c.subset}"),
        (c.val_size >= 0, f"val_size must be >= 0, got {c.val_size}"),
        (c.downsample >= 1, f"downsample must be >= 1, got {c.downsample}"),
        (0 <= c.seed < 2**32, f"seed must be in [0, 2**32) (the range numpy and optuna draw from), got {c.seed}"),
        (bool(_DEVICE.match(c.device)), f"device must be auto, cpu, cuda, cuda:N or mps, got {c.device!r}"),
        (c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}"),
        (c.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {c.eval_batch_size}"),
        (c.lr > 0, f"lr must be > 0, got {c.lr}"),
        (0 <= c.momentum < 1, f"momentum must be in [0, 1), got {c.momentum}"),
        (c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}"),
        (c.lr_schedule in SCHEDULES, f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {c.lr_schedule!r}"),
        (all(0 < m < 1 for m in c.lr_milestones) and list(c.lr_milestones) == sorted(set(c.lr_milestones)),
         f"lr_milestones must be increasing fractions of the epochs in (0, 1), got {list(c.lr_milestones)}"),
        (0 < c.lr_decay <= 1, f"lr_decay must be in (0, 1], got {c.lr_decay}"),
        (c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}"),
        (c.finetune_epochs >= 0, f"finetune_epochs must be >= 0, got {c.finetune_epochs}"),
        (c.finetune_lr > 0, f"finetune_lr must be > 0, got {c.finetune_lr}"),
        (c.finetune_schedule in (None, *SCHEDULES),
         f"finetune_schedule must be one of {', '.join(SCHEDULES)}, got {c.finetune_schedule!r}"),
        (c.finetune_milestones is None or (all(0 < m < 1 for m in c.finetune_milestones)
                                           and list(c.finetune_milestones) == sorted(set(c.finetune_milestones))),
         f"finetune_milestones must be increasing fractions in (0, 1), got {c.finetune_milestones}"),
        (c.finetune_decay is None or 0 < c.finetune_decay <= 1, f"finetune_decay must be in (0, 1], got {c.finetune_decay}"),
        (c.regularizer in REGULARIZERS,
         f"regularizer must be one of {', '.join(REGULARIZERS)}, got {c.regularizer!r}"),
        (c.gamma_upper > 0, f"gamma_upper must be > 0, got {c.gamma_upper}"),
        (0 <= c.gamma_init <= c.gamma_upper, f"gamma_init must be in [0, gamma_upper], got {c.gamma_init}"),
        (c.gamma_lr is None or c.gamma_lr > 0, f"gamma_lr must be > 0, got {c.gamma_lr}"),
        (c.lam_warmup_epochs >= 0, f"lam_warmup_epochs must be >= 0, got {c.lam_warmup_epochs}"),
        (c.threshold_scope in THRESHOLD_SCOPES,
         f"threshold_scope must be one of {', '.join(THRESHOLD_SCOPES)}, got {c.threshold_scope!r}"),
        (c.prunable_set in PRUNABLE_SETS,
         f"prunable_set must be one of {', '.join(PRUNABLE_SETS)}, got {c.prunable_set!r}"),
        (c.baseline in BASELINES, f"baseline must be one of {', '.join(BASELINES)}, got {c.baseline!r}"),
        (0 < c.baseline_flops < 1, f"baseline_flops must be in (0, 1), got {c.baseline_flops}"),
        (c.baseline != "slimming" or c.regularizer == "l1",
         f"baseline slimming is Network Slimming: it needs regularizer l1, got {c.regularizer!r}"),
        (c.baseline != "uniform" or c.regularizer == "none",
         f"baseline uniform trains a narrower network without pruning: it needs regularizer none, got {c.regularizer!r}"),
        (c.max_epochs >= 1, f"max_epochs must be >= 1, got {c.max_epochs}"),
        (c.max_epochs <= c.epochs,
         f"max_epochs ({c.max_epochs}) must be <= epochs ({c.epochs}): a trial is the start of the full run"),
        (0 <= c.min_epochs <= c.max_epochs, f"min_epochs must be in [0, max_epochs], got {c.min_epochs}"),
        (c.f_tol >= 0, f"f_tol must be >= 0, got {c.f_tol}"),
        (c.patience >= 1, f"patience must be >= 1, got {c.patience}"),
        (0 < c.bin_width < c.gamma_upper, f"bin_width must be in (0, gamma_upper), got {c.bin_width}"),
        (c.warm_start_epochs >= 0, f"warm_start_epochs must be >= 0, got {c.warm_start_epochs}"),
        (c.num_workers >= 0, f"num_workers must be >= 0, got {c.num_workers}"),
        (c.threads is None or c.threads >= 1, f"threads must be >= 1, got {c.threads}"),
        *[(n >= 1 and c.batch_size % n == 0,
           f"{name} must be >= 1 and divide batch_size {c.batch_size} (each worker gets an equal part), got {n}")
          for name, n in (("workers_per_trial", c.workers_per_trial), ("final_workers", c.final_workers))],
        (c.latency_runs >= 1, f"latency_runs must be >= 1, got {c.latency_runs}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
