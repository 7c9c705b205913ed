"""Deciding trials early (issue 13): the rule against recorded trajectories it was not measured on,
hand-computed decisions, and a search that asks the same proposals with and without it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from search import strategies
from search.settings import SearchSettings
from search.strategies.early import ABOVE, BELOW, CPU_QUICK, Decision, RiseBounds, decide
from search.strategies.replay import replay

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"


def recorded() -> list[list[float]]:
    rows = []
    for name in ("px16.json", "px16-surface.json"):
        if (RESULTS / name).is_file():
            rows += json.loads((RESULTS / name).read_text())["rows"]
    return [r["f_per_epoch"] for r in rows if r["lam"] > 0 and r.get("f_per_epoch")]


def test_decide_by_hand():
    bounds = RiseBounds(fractions=(0.1, 0.5, 1.0), least=(0.05, 0.0, 0.0), median=(0.1, 0.02, 0.0),
                        most=(0.3, 0.1, 0.0), margin=0.01)  # fmt: skip
    assert decide((0.4, 0.6), [0.0], max_epochs=10, bounds=bounds) is None  # before min_epochs
    # epoch 2 of 10 = 0.2: the 0.1 row applies; F 0.7 -> stable F in [0.74, 1.01]: above 0.6
    d = decide((0.4, 0.6), [0.5, 0.7], max_epochs=10, bounds=bounds)
    assert (d.side, d.epoch, d.flops_reduction) == (ABOVE, 2, 0.7)
    assert (d.low, d.forecast, d.high) == pytest.approx((0.74, 0.8, 1.01))
    # F 0.05 at epoch 2 -> at most 0.36 < 0.4: below; F 0.2 -> at most 0.51: undecided
    assert decide((0.4, 0.6), [0.0, 0.05], max_epochs=10, bounds=bounds).side == BELOW
    assert decide((0.4, 0.6), [0.0, 0.2], max_epochs=10, bounds=bounds) is None
    # at epoch 5 (0.5): F 0.35 -> [0.34, 0.46] overlaps the window: never ended inside it
    assert decide((0.4, 0.6), [0.1] * 4 + [0.35], max_epochs=10, bounds=bounds) is None
    assert decide((0.4, 0.6), [0.0] * 10, max_epochs=10, bounds=RiseBounds((0.5,), (0.0,), (0.0,), (0.2,), 0.0)).side == BELOW


def test_on_recorded_trajectories_a_decided_side_is_the_stable_side_leave_one_out():
    """Bounds measured without trajectory i decide for i only what its stable F confirms."""
    trajectories = recorded()
    assert len(trajectories) >= 19
    windows = [(c - w, c + w) for c in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7) for w in (0.03, 0.05, 0.06, 0.1)]
    decided = inside = 0
    for i, traj in enumerate(trajectories):
        others = trajectories[:i] + trajectories[i + 1 :]
        bounds = RiseBounds.measure(others, 30, CPU_QUICK.margin)
        stable = traj[-1]
        for low, high in windows:
            for k in range(2, len(traj) + 1):
                d = decide((low, high), traj[:k], 30, bounds)
                if d is None:
                    continue
                decided += 1
                assert not low <= stable <= high, (i, low, high, k)  # never ends a trial inside the window
                assert d.side == (ABOVE if stable > high else BELOW), (i, low, high, k, d)
                break
            inside += low <= stable <= high
    assert decided > 100 and inside > 10  # the rule does decide, and windows holding the trial were tried


def monotone_trajectory(lam: float, t: float) -> list[float]:
    """A deterministic trial: F rises to F(λ, t) = sigmoid in log λ + 0.15 (t − 1.2), like the recorded ones."""
    final = min(1.0, max(0.0, 0.8 / (1 + math.exp(-2.2 * math.log(lam / 7e-4))) + 0.15 * (t - 1.2)))
    return [final * (1 - math.exp(-k / 4)) / (1 - math.exp(-30 / 4)) for k in range(1, 31)]


def stable_rule(fs) -> bool:
    return len(fs) >= 20 and max(fs[-4:]) - min(fs[-4:]) <= 0.01


@pytest.mark.parametrize("name", ["algorithm1", "kary"])
@pytest.mark.parametrize("target", [0.2, 0.3, 0.5, 0.7])
def test_early_decisions_keep_the_proposals_and_cost_less(name, target):
    grid = [monotone_trajectory(10 ** (-4 + i / 8), 0.6 + j / 10) for i in range(14) for j in range(13)]
    bounds = RiseBounds.measure(grid, 30, margin=0.01)
    costs = {}
    for early in (False, True):
        settings = SearchSettings(target=target, delta=0.05, strategy=name, lam_high=2e-3,
                                  parallel=2 if name == "kary" else 1, early_decisions=early)  # fmt: skip
        costs[early] = replay(strategies.build(settings), monotone_trajectory, stable_rule, 30, bounds)
    assert costs[True].proposals == costs[False].proposals
    assert costs[True].converged == costs[False].converged and costs[True].reason == costs[False].reason
    assert costs[True].epochs <= costs[False].epochs
    if costs[True].decided:
        assert costs[True].epochs < costs[False].epochs


def test_a_decided_trial_is_never_the_winner():
    algo = strategies.build(SearchSettings(target=0.5, delta=0.05))
    p = algo.ask()
    assert algo.window(p) == pytest.approx((0.4, 0.6))  # the λ phase asks about the 2δ window
    algo.tell(p, 0.75, decided=ABOVE)
    assert algo.best is None and algo.history[0]["decided"] == ABOVE
    q = algo.ask()
    algo.tell(q, 0.43)  # inside 2δ: the t phase, which asks about the δ window
    assert algo.window(algo.ask()) == pytest.approx((0.45, 0.55))
    assert algo.best.id == q.id
    off = strategies.build(SearchSettings(target=0.5, delta=0.05, early_decisions=False))
    assert off.window(off.ask()) is None


def test_replay_counts_what_its_rule_decides():
    """A rule that never decides costs what no rule costs; one that decides at epoch 2 every trial
    outside its window costs 2 epochs for each of those and the stable length for the others."""
    settings = dict(target=0.3, delta=0.05, strategy="algorithm1", lam_high=2e-3)
    off = replay(strategies.build(SearchSettings(**settings, early_decisions=False)), monotone_trajectory,
                 stable_rule, 30)  # fmt: skip
    never = replay(strategies.build(SearchSettings(**settings)), monotone_trajectory, stable_rule, 30,
                   rule=lambda window, fs, n: None)  # fmt: skip
    assert (never.proposals, never.epochs, never.decided) == (off.proposals, off.epochs, 0)

    def at_two(window, fs, n):
        final = monotone_trajectory(*current)[-1]
        if len(fs) == 2 and not window[0] <= final <= window[1]:
            return Decision(ABOVE if final > window[1] else BELOW, 2, fs[-1], final, final, final)
        return None

    current: list[float] = []

    def trajectory(lam, t):
        current[:] = [lam, t]
        return monotone_trajectory(lam, t)

    cost = replay(strategies.build(SearchSettings(**settings)), trajectory, stable_rule, 30, rule=at_two)
    assert cost.proposals == off.proposals and cost.decided >= 1  # the same sides, so the same proposals
    undecided = len(cost.proposals) - cost.decided
    assert cost.epochs == 2 * cost.decided + 20 * undecided  # the monotone trials are stable at epoch 20
