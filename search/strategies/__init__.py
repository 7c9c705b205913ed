"""Every search strategy by name, with the same ask/tell protocol (search.base): `make(name, ...)`.

- "algorithm1": the paper's Algorithm 1 (search.algorithm1).
- "kary" (`KAry`, search.kary): k trials at once; each round narrows the λ bracket k+1 times, then
  the t bracket the same way.
- "secant" (`Secant`, search.secant): regula falsi and secant steps on a model of F over (log λ, t),
  one trial at a time.
- "optuna" (`OptunaSearch`, search.optuna_search): Optuna's TPE over (log λ, t) minimising |F − F*|.

kary and secant share a λ phase, a t phase and their stopping rules (search.two_phase).
"""

from __future__ import annotations

from search.algorithm1 import T_STEP_EXHAUSTED, UNREACHABLE_HIGH, UNREACHABLE_LOW, Algorithm1
from search.base import Proposal, Strategy, Trial, check_target, interior_points, round_t
from search.kary import KAry
from search.optuna_search import OptunaSearch
from search.secant import LOG_LAM_PRIOR_SLOPE, T_PRIOR_SLOPE, Secant
from search.two_phase import T_RANGE_EXHAUSTED

__all__ = [
    "LOG_LAM_PRIOR_SLOPE", "STRATEGIES", "T_PRIOR_SLOPE", "T_RANGE_EXHAUSTED", "T_STEP_EXHAUSTED",
    "UNREACHABLE_HIGH", "UNREACHABLE_LOW", "Algorithm1", "KAry", "OptunaSearch", "Proposal", "Secant",
    "Strategy", "Trial", "check_target", "interior_points", "make", "round_t",
]  # fmt: skip

STRATEGIES = ("algorithm1", "kary", "secant", "optuna")


def make(name: str, target: float, delta: float, *, lam_low: float = 0.0, lam_high: float = 2e-4,
         t: float = 1.2, t_step: float = 0.1, max_trials: int = 20, parallel: int = 1, seed: int = 0,
         storage: str | None = None, study_name: str | None = None) -> Strategy:
    """The strategy `name` (one of STRATEGIES); `parallel` is kary's k and Optuna's outstanding trials."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    check_target(target, delta)
    common = {"lam_low": lam_low, "lam_high": lam_high, "t": t, "t_step": t_step, "max_trials": max_trials}
    if name == "algorithm1":
        return Algorithm1(target, delta, **common)
    if name == "kary":
        return KAry(target, delta, k=parallel, **common)
    if name == "secant":
        return Secant(target, delta, **common)
    return OptunaSearch(target, delta, parallel=parallel, seed=seed, storage=storage, study_name=study_name,
                        **common)
