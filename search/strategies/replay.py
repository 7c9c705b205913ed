"""What a search costs: drive a strategy against per-epoch F trajectories, as a search would, and
count trials and trial-epochs — with or without deciding trials early (search.strategies.early).

    cost = replay(strategy, trajectory, stable, max_epochs=30)    # trajectory(λ, t) -> F per epoch

`stable(fs)` is the trial's own stopping rule (trainers.trial.is_stable in the bench); a trial stops
at the first epoch it holds, or at `max_epochs`. Proposals outstanding together (kary's rounds,
Optuna's batch) are trained side by side and told in order. Pure Python: the recorded surface that
gives `trajectory` lives in bench/bench_search_cost.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search.strategies.base import WAIT, Strategy
from search.strategies.early import CPU_QUICK, Decision, RiseBounds, Window, decide

Trajectory = Callable[[float, float], Sequence[float]]
Rule = Callable[[Window, Sequence[float], int], Decision | None]


@dataclass(frozen=True)
class Cost:
    """Trials, trial-epochs and rounds a search took, whether it reached the window, and what it asked."""

    trials: int
    epochs: int
    rounds: int
    converged: bool
    reason: str
    proposals: tuple[tuple[float, float], ...]
    decided: int  # trials ended early


def replay(strategy: Strategy, trajectory: Trajectory, stable: Callable[[Sequence[float]], bool],
           max_epochs: int, bounds: RiseBounds = CPU_QUICK, rule: Rule | None = None) -> Cost:  # fmt: skip
    """Run `strategy` to its end on `trajectory`; a trial decides early where `strategy.window` asks,
    by `rule(window, F per epoch so far, max_epochs)` (default: `decide` with `bounds`)."""
    rule = rule or (lambda window, fs, n: decide(window, fs, n, bounds))
    epochs = rounds = decided = 0
    proposals: list[tuple[float, float]] = []
    while True:
        batch = []
        while (p := strategy.ask()) not in (None, WAIT):
            batch.append((p, strategy.window(p)))
        if not batch:
            return Cost(len(proposals), epochs, rounds, strategy.converged, strategy.reason, tuple(proposals), decided)
        rounds += 1
        for p, window in batch:
            proposals.append(p.point)
            fs = list(trajectory(p.lam, p.t))[:max_epochs]
            for k in range(1, len(fs) + 1):
                decision = rule(window, fs[:k], max_epochs) if window is not None else None
                if decision is not None:
                    epochs, decided = epochs + k, decided + 1
                    strategy.tell(p, decision.forecast, decided=decision.side)
                    break
                if stable(fs[:k]) or k == len(fs):
                    epochs += k
                    strategy.tell(p, fs[k - 1])
                    break
