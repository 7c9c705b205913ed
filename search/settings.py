"""The settings of one search: one frozen object, validated once when it is made.

    settings = SearchSettings(target=0.5, delta=0.05)                  # Algorithm 1 with the paper's range
    settings = SearchSettings(target=0.3, strategy="kary", parallel=4, lam_high=2e-3, max_trials=12)

The paper's constants (λ in [0, 2e-4], t₀ = 1.2, t step 0.1) are Algorithm 1's and live beside it
(`search.strategies.algorithm1`); a preset may override them in its `search:` section, the CLI's
flags override the preset. Every strategy (`search.strategies`) is built from this object, and the
number of trials it keeps outstanding (`concurrency`) sets how a search divides its resources.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from search.strategies.algorithm1 import LAM_HIGH, LAM_LOW, T_INIT, T_STEP

MAX_TRIALS = 20


class SettingsError(ValueError):
    """A search setting a user gave is wrong; the message is one line meant for them."""


@dataclass(frozen=True)
class SearchSettings:
    """Target F*, window δ, the strategy and its parallelism, Algorithm 1's (λ_l, λ_u, t₀, t step), budget."""

    target: float
    delta: float = 0.05
    strategy: str = "algorithm1"
    parallel: int = 1  # trials at once, for the strategies that can use them (kary's k, optuna's batch)
    lam_low: float = LAM_LOW
    lam_high: float = LAM_HIGH
    t_init: float = T_INIT
    t_step: float = T_STEP
    max_trials: int = MAX_TRIALS
    seed: int = 0  # the seed of a strategy that draws (optuna)
    early_decisions: bool = True  # stop a trial once the side of the strategy's window is known (issue 13)
    reuse_trials: bool = True  # start from the stable trials of earlier searches of the same trainer config

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _coerce(field.name, getattr(self, field.name), field.type))
        _check(self)

    @property
    def concurrency(self) -> int:
        """How many trials the strategy keeps outstanding at once (1 for the sequential ones)."""
        from search.strategies import strategy_class

        return strategy_class(self.strategy).concurrency(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(SearchSettings))


def settings_from(values: dict[str, Any]) -> SearchSettings:
    """A SearchSettings of `values` (e.g. a preset's `search:` section over-written by flags);
    unknown keys and bad values raise SettingsError."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise SettingsError(f"unknown search setting {unknown[0]!r} (known: {', '.join(FIELDS)})")
    if values.get("target") is None:
        raise SettingsError("the target FLOPs reduction is required (--target-flops, in (0, 1))")
    return SearchSettings(**values)


def _coerce(name: str, value: Any, kind: str) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"{name} must be true or false, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SettingsError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{name} must be an integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise SettingsError(f"{name} must be a string, got {value!r}")
    return value


def _check(s: SearchSettings) -> None:
    from search.strategies import names, strategy_class

    checks = [
        (0.0 < s.target < 1.0, f"target FLOPs reduction must be in (0, 1), got {s.target}"),
        (0.0 < s.delta < s.target, f"delta must be in (0, target={s.target}), got {s.delta}"),
        (s.strategy in names(), f"unknown strategy {s.strategy!r} (choose from {', '.join(names())})"),
        (s.parallel >= 1, f"parallel must be >= 1, got {s.parallel}"),
        (0.0 <= s.lam_low < s.lam_high, f"need 0 <= lam_low < lam_high, got {s.lam_low} and {s.lam_high}"),
        (s.t_step > 0, f"t_step must be > 0, got {s.t_step}"),
        (s.max_trials >= 1, f"max_trials must be >= 1, got {s.max_trials}"),
        (s.seed >= 0, f"seed must be >= 0, got {s.seed}"),
    ]
    for ok, message in checks:
        if not ok:
            raise SettingsError(message)
    if s.parallel > 1 and not strategy_class(s.strategy).uses_parallel:
        raise SettingsError(f"{s.strategy} runs one trial at a time: --parallel {s.parallel} applies to "
                            f"{', '.join(n for n in names() if strategy_class(n).uses_parallel)} only")
