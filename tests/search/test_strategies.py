"""Every strategy driven by plain Python oracles F(λ, t): it stops, it converges where it can, it resumes.

The oracles (ORACLES) are also what bench/bench_strategies.py counts trials-to-target on.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from search import strategies
from search.settings import SearchSettings, SettingsError
from search.strategies.base import CONVERGED, MAX_TRIALS, WAIT
from search.strategies.kary import KAry
from search.strategies.optuna_search import OptunaSearch
from search.strategies.secant import Secant

STRATEGIES = strategies.names()

TARGETS = (0.3, 0.5, 0.7)
DELTA = 0.05


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _clip(f: float) -> float:
    return min(1.0, max(0.0, f))


def monotone(seed: int = 0, center: float = 8e-5, width: float = 2.0):
    """F grows with log λ as a sigmoid and with t by 0.15 per unit: every target reachable in [0, 2e-4]."""
    del seed
    return lambda lam, t: _clip(0.9 * _sigmoid(width * math.log(max(lam, 1e-12) / center)) + 0.15 * (t - 1.2))


def cpu_like(seed: int = 0):
    """Issue 6's measured CPU regime (ResNet-20, 16×16 inputs): F piecewise linear in log λ, past 2e-4."""
    del seed
    points = [(1e-4, 0.0), (3e-4, 0.05), (5e-4, 0.2), (7e-4, 0.4), (1e-3, 0.49), (3e-3, 0.68), (1e-2, 0.72)]

    def F(lam, t):
        x = math.log(max(lam, 1e-12))
        f = points[0][1] if x <= math.log(points[0][0]) else points[-1][1]
        for (l0, f0), (l1, f1) in zip(points, points[1:], strict=False):
            if math.log(l0) <= x <= math.log(l1):
                f = f0 + (f1 - f0) * (x - math.log(l0)) / (math.log(l1) - math.log(l0))
        return _clip(f + 0.2 * (t - 1.2))

    return F


def noisy(seed: int = 0):
    """The monotone oracle plus Gaussian noise (σ = 0.01), seeded."""
    rng, base = random.Random(seed), monotone()
    return lambda lam, t: _clip(base(lam, t) + rng.gauss(0.0, 0.01))


def flat(seed: int = 0):
    """F does not respond to λ or t."""
    del seed
    return lambda lam, t: 0.37


def _stair(lam: float, top: int) -> int:
    """Which stair λ is on: one per doubling of λ from 1.25e-5 (0 below), at most `top`."""
    return min(top, max(0, math.floor(math.log2(max(lam, 1e-12) / 1.25e-5))))


def step(seed: int = 0):
    """A staircase in λ (0.16 per doubling, more than the 2δ window) plus 0.25 per unit of t."""
    del seed
    return lambda lam, t: _clip(0.16 * _stair(lam, 6) + 0.25 * (t - 1.2))


def jump(seed: int = 0):
    """Issue 6's first regime: F is 0 below λ = 2e-3 and ≈ 0.58 above; only t > 1.2 adds to it."""
    del seed
    return lambda lam, t: 0.0 if lam < 2e-3 else min(0.95, 0.58 + 0.8 * max(0.0, t - 1.2))


def unreachable(seed: int = 0):
    """F never exceeds 0.2 whatever λ and t: every target is out of reach."""
    del seed
    return lambda lam, t: 0.2 * _sigmoid(2 * math.log(max(lam, 1e-12) / 8e-5))


def oscillating(seed: int = 0):
    """Stairs 0.2 apart in λ that stop 0.08 from each target, and F moving 0.15 per 0.1 of t.

    Algorithm 1's λ phase ends within 2δ, then every t step jumps across the δ-window: the paper's
    t loop never ends.
    """
    del seed
    return lambda lam, t: _clip(0.02 + 0.2 * _stair(lam, 4) + 1.5 * (t - 1.2))


def failing(seed: int = 0):
    """The monotone oracle, but training diverges (NaN) for λ > 1.2e-4 and at random 15 % of the time."""
    rng, base = random.Random(seed), monotone()
    return lambda lam, t: float("nan") if lam > 1.2e-4 or rng.random() < 0.15 else base(lam, t)


ORACLES = {
    f.__name__: f for f in (monotone, cpu_like, noisy, flat, step, jump, unreachable, oscillating, failing)
}


def run(strategy, F, reverse: bool = True):
    """Drive a strategy to its end: ask for every proposal it has, tell them (last first), repeat.

    Returns (trials, rounds): how many trials were trained and in how many batches.
    """
    trials = rounds = 0
    while True:
        batch = []
        while (p := strategy.ask()) not in (None, WAIT):
            batch.append(p)
        if not batch:
            assert strategy.ask() is None and not strategy.outstanding
            return trials, rounds
        for p in reversed(batch) if reverse else batch:
            strategy.tell(p, F(*p.point))
        trials, rounds = trials + len(batch), rounds + 1


def build(name: str, target: float, max_trials: int = 20, **fields):
    fields.setdefault("parallel", 4 if name == "kary" else 1)
    settings = SearchSettings(target=target, delta=DELTA, strategy=name, max_trials=max_trials, **fields)
    return strategies.build(settings)


def test_registry_names_and_validation():
    assert set(STRATEGIES) == {"algorithm1", "kary", "secant", "optuna"}
    for name in STRATEGIES:
        assert build(name, 0.5).name == name
    with pytest.raises(SettingsError, match="unknown strategy"):
        SearchSettings(target=0.5, strategy="grid")
    for target, delta in [(0.0, 0.05), (1.0, 0.05), (1.5, 0.1), (0.5, 0.0), (0.5, 0.5), (0.3, 0.4)]:
        with pytest.raises(SettingsError):
            SearchSettings(target=target, delta=delta, strategy="secant")
    assert isinstance(build("kary", 0.5, parallel=3), KAry) and build("kary", 0.5, parallel=3).k == 3
    # each strategy states how many trials it keeps outstanding; --parallel means nothing to the sequential ones
    assert [SearchSettings(target=0.5, strategy=n, parallel=3).concurrency for n in ("kary", "optuna")] == [3, 3]
    for name in ("algorithm1", "secant"):
        assert SearchSettings(target=0.5, strategy=name).concurrency == 1
        with pytest.raises(SettingsError, match="one trial at a time"):
            SearchSettings(target=0.5, strategy=name, parallel=4)


@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_always_stops_within_max_trials(name, oracle):
    max_trials = 12 if name == "optuna" else 20
    for target in TARGETS:
        strategy = build(name, target, max_trials=max_trials)
        trials, _ = run(strategy, ORACLES[oracle](seed=7))
        assert 1 <= trials <= max_trials and strategy.finished and strategy.reason
        assert len(strategy.history) == trials
        assert strategy.converged == (strategy.reason == CONVERGED)
        ok = [h for h in strategy.history if h["status"] == "ok"]
        if strategy.converged:
            assert abs(strategy.best.flops_reduction - target) <= DELTA
        if ok:  # best is the told trial closest to the target
            closest = min(abs(h["flops_reduction"] - target) for h in ok)
            assert abs(strategy.best.flops_reduction - target) == closest
        else:
            assert strategy.best is None
        if trials < max_trials:
            assert strategy.reason != MAX_TRIALS


@pytest.mark.parametrize("name", ["algorithm1", "kary", "secant"])
@pytest.mark.parametrize("oracle", ["monotone", "noisy", "cpu_like", "step", "oscillating"])
def test_converges_where_the_window_is_reachable(name, oracle):
    for target in TARGETS:
        if oracle == "step" and name == "algorithm1" and target == 0.3:
            continue  # the paper's bisection spends its 20 trials collapsing onto a stair edge
        strategy = build(name, target)
        run(strategy, ORACLES[oracle](seed=3))
        assert strategy.converged, (target, strategy.reason, strategy.history)
        assert abs(strategy.best.flops_reduction - target) <= DELTA


def test_optuna_converges_on_a_monotone_oracle():
    for target in TARGETS:
        strategy = build("optuna", target, max_trials=40, seed=1)
        run(strategy, monotone())
        assert strategy.converged and abs(strategy.best.flops_reduction - target) <= DELTA


def test_targets_out_of_reach_end_with_a_reason():
    for name in ("algorithm1", "kary"):
        strategy = build(name, 0.5, max_trials=40)
        run(strategy, lambda lam, t: 0.0)
        assert strategy.reason == "target unreachable: F(lam_high) below target"
        strategy = build(name, 0.3, max_trials=40)
        run(strategy, lambda lam, t: 0.9)
        assert strategy.reason == "target unreachable: F(lam_low) above target"
    strategy = build("secant", 0.7, max_trials=40)
    run(strategy, unreachable())
    assert strategy.reason == "t range exhausted" and not strategy.converged


def test_secant_needs_fewer_trials_than_bisection_on_monotone_oracles():
    totals = {"algorithm1": 0, "secant": 0}
    for center in (3e-5, 8e-5, 1.5e-4):
        for width in (1.0, 2.0, 4.0):
            for target in TARGETS:
                for name in totals:
                    strategy = build(name, target)
                    totals[name] += run(strategy, monotone(center=center, width=width))[0]
                    assert strategy.converged
    assert totals["secant"] < 0.75 * totals["algorithm1"], totals


def test_kary_needs_fewer_rounds_than_bisection_needs_trials():
    rounds = trials = 0
    for oracle in ("monotone", "cpu_like", "step"):
        for target in TARGETS:
            rounds += run(build("kary", target, max_trials=40), ORACLES[oracle]())[1]
            trials += run(build("algorithm1", target, max_trials=40), ORACLES[oracle]())[0]
    assert rounds < 0.6 * trials, (rounds, trials)


def test_kary_proposes_a_round_at_once():
    kary = build("kary", 0.5, parallel=4)
    round1 = [kary.ask() for _ in range(4)]
    assert kary.ask() is WAIT
    assert [p.lam for p in round1] == pytest.approx([4e-5, 8e-5, 1.2e-4, 1.6e-4])  # equally spaced
    assert all(p.t == 1.2 for p in round1) and [p.id for p in round1] == [0, 1, 2, 3]
    F = lambda lam, t: (lam / 2e-4) ** 2  # noqa: E731 - F = 0.04, 0.16, 0.36, 0.64: none within 2δ of 0.5
    kary.tell(round1[2], F(*round1[2].point))
    assert kary.ask() is WAIT  # the round is not complete
    for p in (round1[0], round1[3], round1[1]):
        kary.tell(p, F(*p.point))
    round2 = [kary.ask() for _ in range(4)]
    lams = [p.lam for p in round2]  # log-spaced inside the new bracket (1.2e-4, 1.6e-4)
    assert lams == pytest.approx([1.2e-4 * (4 / 3) ** (i / 5) for i in range(1, 5)])
    with pytest.raises(ValueError):
        kary.tell(round1[0], 0.5)  # told already


def test_sequential_strategies_wait_and_optuna_runs_parallel():
    for name in ("algorithm1", "secant"):
        strategy = build(name, 0.5)
        assert strategy.ask() is not WAIT and strategy.ask() is WAIT
    optuna = build("optuna", 0.5, parallel=2)
    first, second = optuna.ask(), optuna.ask()
    assert first.point == pytest.approx((1e-4, 1.2)) and second not in (WAIT, None) and optuna.ask() is WAIT
    optuna.tell(second, 0.3)  # the second told first: matched by its id
    assert optuna.ask() not in (WAIT, None)


@pytest.mark.parametrize("name", ["kary", "secant", "algorithm1"])
def test_state_dict_resumes_mid_search(name):
    F = jump()
    reference = build(name, 0.4, max_trials=30)
    run(reference, F, reverse=False)
    strategy = build(name, 0.4, max_trials=30)
    while len(strategy.history) < 8:
        assert not strategy.finished
        batch = []
        while (p := strategy.ask()) not in (None, WAIT):
            batch.append(p)
        for p in batch:
            strategy.tell(p, F(*p.point))
    while strategy.ask() not in (None, WAIT):
        pass  # the next proposals are outstanding when the driver dies
    assert strategy.outstanding and not strategy.finished
    resumed = build(name, 0.4, max_trials=30)
    resumed.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert resumed.outstanding == strategy.outstanding and resumed.history == strategy.history
    for p in resumed.outstanding:
        resumed.tell(p, F(*p.point))
    run(resumed, F, reverse=False)
    assert resumed.history == reference.history and resumed.reason == reference.reason


def test_failed_trials_are_recorded_and_searched_around():
    for name in STRATEGIES:
        strategy = build(name, 0.7, max_trials=12)
        run(strategy, lambda lam, t: float("nan") if lam > 8e-5 else lam / 1e-4)
        failed = [h for h in strategy.history if h["status"] == "failed"]
        assert failed and all(h["flops_reduction"] is None for h in failed), name
        assert strategy.finished and strategy.best is not None and strategy.best.lam <= 8e-5


def test_optuna_space_seed_and_fail_states():
    a, b = (build("optuna", 0.5, max_trials=10, seed=5, lam_high=1e-3) for _ in range(2))
    run(a, failing(seed=2))
    run(b, failing(seed=2))
    assert a.history == b.history  # seeded: the same proposals
    assert a.history[0]["lam"] == pytest.approx(5e-4) and a.history[0]["t"] == pytest.approx(1.2)
    assert all(1e-6 <= h["lam"] <= 1e-3 and 0.2 <= h["t"] <= 2.2 for h in a.history)
    import optuna

    states = [tr.state for tr in a._study.trials]
    fails = [h["status"] == "failed" for h in a.history]
    assert states == [optuna.trial.TrialState.FAIL if f else optuna.trial.TrialState.COMPLETE for f in fails]
    values = [tr.value for tr in a._study.trials if tr.value is not None]
    told = [abs(h["flops_reduction"] - 0.5) for h in a.history if h["status"] == "ok"]
    assert values == pytest.approx(told)


def test_optuna_study_survives_the_driver(tmp_path):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    first = OptunaSearch(target=0.5, delta=0.05, max_trials=8, storage=storage, study_name="s1", lam_high=1e-3)
    F = monotone()
    for _ in range(3):
        first.tell(p := first.ask(), F(*p.point))
    pending = first.ask()
    state = json.loads(json.dumps(first.state_dict()))
    assert state["state"]["storage"] == storage and state["state"]["study_name"] == "s1"
    del first  # the driver dies with one trial running
    second = OptunaSearch(target=0.5, delta=0.05, max_trials=8, storage=storage, study_name="s1", lam_high=1e-3)
    assert len(second._study.trials) == 4  # the study lives in the database
    second.load_state_dict(state)
    second.tell(pending, F(*pending.point))
    trials, _ = run(second, F)
    assert len(second.history) == 4 + trials <= 8
    lams = [tr.params["lam"] for tr in second._study.trials]
    assert lams == pytest.approx([h["lam"] for h in second.history])
    assert all(tr.state.name in ("COMPLETE", "FAIL") for tr in second._study.trials)
    # in memory, the told trials are replayed into a fresh study
    mem = OptunaSearch(target=0.5, delta=0.05, max_trials=8, lam_high=1e-3)
    mem.tell(p := mem.ask(), F(*p.point))
    again = OptunaSearch(target=0.5, delta=0.05, max_trials=8, lam_high=1e-3)
    again.load_state_dict(json.loads(json.dumps(mem.state_dict())))
    assert len(again._study.trials) == 1 and again.ask().lam != pytest.approx(mem.history[0]["lam"])
    with pytest.raises(ValueError):
        Secant(target=0.5, delta=0.05).load_state_dict(state)


@pytest.mark.parametrize("name", ["secant", "kary"])
def test_an_accidental_failure_below_a_success_is_not_too_much_regularization(name):
    base, calls = monotone(), []

    def F(lam, t):  # the second trial fails once (a killed process), whatever its λ
        calls.append(lam)
        return float("nan") if len(calls) == 2 else base(lam, t)

    strategy = build(name, 0.3)
    run(strategy, F)
    failed = [h for h in strategy.history if h["status"] == "failed"]
    assert len(failed) == 1 and strategy.converged
    if name == "secant":  # λ = 1e-4 succeeded above the target, so the smaller failed λ is tried again
        assert strategy.history[2]["lam"] == strategy.history[1]["lam"]
