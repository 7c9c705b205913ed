"""The search strategies: pure ask/tell objects (no Ray, no torch), registered by name.

- "algorithm1": the paper's Algorithm 1 (algorithm1.py), one trial at a time; its constants
  (λ in [0, 2e-4], t₀ = 1.2, t step 0.1) are the settings' defaults.
- "kary": k = settings.parallel trials at once; each round narrows the λ bracket k+1 times, then
  the t bracket the same way (kary.py).
- "secant": regula falsi and secant steps on a model of F over (log λ, t), one trial at a time
  (secant.py).
- "optuna": Optuna's TPE over (log λ, t) minimising |F − F*|, settings.parallel trials at once
  (optuna_search.py).

kary and secant share a λ phase, a t phase and their stopping rules (two_phase.py). A strategy is
built from a `search.settings.SearchSettings`: `build(settings)`.
"""

from __future__ import annotations

from typing import Any

from search.strategies import algorithm1, kary, optuna_search, secant  # noqa: F401 - they register themselves
from search.strategies.base import _REGISTRY, WAIT, Proposal, Strategy, Trial, register

__all__ = ["WAIT", "Proposal", "Strategy", "Trial", "build", "names", "register", "strategy_class"]


def names() -> tuple[str, ...]:
    """The registered strategies' names, in registration order."""
    return tuple(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(names())}") from None


def build(settings: Any, **extras: Any) -> Strategy:
    """The strategy `settings.strategy`, built from `settings` (and its own `extras`, e.g. Optuna's storage)."""
    return strategy_class(settings.strategy)(settings, **extras)
