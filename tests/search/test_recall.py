"""Issue 13: a search that starts from the trials earlier searches of the same trainer config ran to a
stable F (Strategy.recall; search.earlier reads them from a real SQLite MLflow store)."""

from __future__ import annotations

import math

import pytest

from search import strategies
from search.earlier import earlier_trials
from search.settings import SearchSettings
from search.strategies.replay import replay
from search.tracking import SearchTracker
from tests.search.test_early import monotone_trajectory, stable_rule
from tests.search.test_tracking import end, epoch
from trainers.config import load_config

KNOWN = [(2.5e-4, 1.2, 0.2), (1e-3, 1.2, 0.62), (5e-4, 1.5, 0.5)]  # the last one is at another t


def build(name: str, **fields) -> strategies.Strategy:
    return strategies.build(SearchSettings(**{"target": 0.5, "delta": 0.05, "strategy": name, "lam_high": 2e-3,
                                              **fields}))  # fmt: skip


def test_algorithm1_bisects_the_bracket_the_earlier_trials_leave():
    algo = build("algorithm1")
    assert algo.recall(KNOWN) == 2  # only the trials at t0 = 1.2: the λ phase's
    p = algo.ask()
    assert p.point == pytest.approx(((2.5e-4 + 1e-3) / 2, 1.2))  # the midpoint of [λ(F 0.2), λ(F 0.62)]
    assert algo.window(p) == pytest.approx((0.4, 0.6))
    assert algo.trials == [] and [tr.lam for tr in algo.known] == [2.5e-4, 1e-3]


def test_algorithm1_starts_the_t_phase_from_an_earlier_trial_within_2_delta():
    algo = build("algorithm1")
    algo.recall([(2.5e-4, 1.2, 0.2), (1e-3, 1.2, 0.58)])  # 0.58: inside 2δ, above δ
    p = algo.ask()
    assert p.point == pytest.approx((1e-3, 1.1))  # the paper's t step: F above the window, t down by 0.1
    assert algo.window(p) == pytest.approx((0.45, 0.55))


@pytest.mark.parametrize("name", ["algorithm1", "secant"])
def test_an_earlier_trial_within_delta_is_the_answer_and_nothing_is_trained(name):
    algo = build(name)
    algo.recall([(1e-3, 1.2, 0.62), (6e-4, 1.2, 0.53)])
    assert algo.finished and algo.converged and algo.ask() is None
    assert (algo.best.lam, algo.best.flops_reduction, algo.best.known) == (6e-4, 0.53, True)
    assert algo.trials == []


def test_secant_interpolates_between_the_earlier_trials():
    secant = build("secant")
    secant.recall(KNOWN + [(1.5e-3, 1.2, 0.7)])  # two known above: no Illinois halving, they were not told in turn
    frac = (0.5 - 0.2) / (0.62 - 0.2)  # regula falsi on log λ between F 0.2 and F 0.62
    assert secant.ask().lam == pytest.approx(math.exp(math.log(2.5e-4) + frac * math.log(1e-3 / 2.5e-4)))


def test_recalled_trials_are_not_in_the_trial_budget_and_survive_a_resume():
    algo = build("algorithm1", max_trials=1)
    algo.recall(KNOWN)
    p = algo.ask()
    saved = algo.state_dict()
    again = build("algorithm1", max_trials=1)
    again.load_state_dict(saved)
    assert again.known == algo.known and again.outstanding == [p]
    again.tell(p, 0.3)
    assert again.ask() is None and again.reason == "max_trials reached" and len(again.trials) == 1


@pytest.mark.parametrize("name", ["kary", "optuna"])
def test_a_strategy_that_cannot_recall_says_so(name):
    with pytest.raises(ValueError, match="cannot start from earlier trials"):
        strategies.build(SearchSettings(target=0.5, strategy=name)).recall(KNOWN)


def test_recall_comes_before_the_first_ask():
    algo = build("algorithm1")
    algo.ask()
    with pytest.raises(ValueError, match="before the first ask"):
        algo.recall(KNOWN)


@pytest.mark.parametrize("name", ["algorithm1", "secant"])
@pytest.mark.parametrize(("first", "second"), [(0.3, 0.5), (0.7, 0.4), (0.5, 0.2)])
def test_a_second_search_from_the_first_ones_trials_asks_nothing_twice_and_stays_in_their_bracket(name, first, second):
    """On a deterministic oracle whose F rises with λ: the second search never proposes a λ the first
    trained, every λ-phase proposal lies strictly between the known trials that bracket F*, and it
    converges with no more trials than the same search from nothing."""
    earlier = build(name, target=first, early_decisions=False)
    replay(earlier, monotone_trajectory, stable_rule, 30)
    known = [(tr.lam, tr.t, tr.flops_reduction) for tr in earlier.trials]
    alone = replay(build(name, target=second, early_decisions=False), monotone_trajectory, stable_rule, 30)
    started = build(name, target=second, early_decisions=False)
    started.recall(known)
    cost = replay(started, monotone_trajectory, stable_rule, 30)
    assert cost.converged and alone.converged
    assert cost.trials <= alone.trials
    t0 = [(lam, f) for lam, t, f in known if t == 1.2]
    below = max((lam for lam, f in t0 if f < second), default=0.0)
    above = min((lam for lam, f in t0 if f > second), default=math.inf)
    for lam, t in cost.proposals:
        assert all(not math.isclose(lam, k) or t != kt for k, kt, _ in known)
        if t == 1.2:
            assert below < lam < above


def test_earlier_trials_are_those_of_the_same_trainer_config_that_ran_to_a_stable_f(tmp_path):
    """Real SQLite store, written by SearchTracker as a search writes it."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = load_config("smoke", {"data_dir": str(tmp_path / "data")})
    searches = {
        "same": base,
        "other machine": load_config("smoke", {"data_dir": str(tmp_path / "data"), "threads": 2, "device": "cpu",
                                               "num_workers": 0}),  # fmt: skip
        "other seed": load_config("smoke", {"data_dir": str(tmp_path / "data"), "seed": 1}),
        "other data": load_config("smoke", {"data_dir": str(tmp_path / "elsewhere")}),
    }
    parents = {}
    for i, (name, config) in enumerate(searches.items()):
        tracker = SearchTracker(store, "exp")
        parents[name] = tracker.start_search({**config.to_dict(), "target": 0.5, "delta": 0.05, "preset": "smoke"}, run_name=name)
        lam = 1e-4 * (i + 1)
        for trial, status, f in ((f"{name}-a", "stable", 0.3), (f"{name}-b", "decided", 0.7),
                                 (f"{name}-c", "failed", math.nan), (f"{name}-d", "max_epochs", 0.41)):  # fmt: skip
            tracker.log_epoch(trial, epoch(lam, 1.2, 1, 0.1, acc=0.61))
            tracker.end_trial(trial, {**end(lam, 1.2, 6, f, status=status),
                                      **({"decided": "above", "forecast": 0.8} if status == "decided" else {})})
            lam *= 2
        tracker.end_search("stopped", "max_trials reached", None)

    found = earlier_trials(SearchTracker(store, "exp").client, tracker.experiment_id, base)
    # "same" and "other machine" (threads, device, workers do not change F): their stable and
    # max_epochs trials; not the decided, failed, other-seed or other-data ones
    assert sorted((round(k.lam, 10), k.flops_reduction, k.epochs, k.val_accuracy) for k in found) == [
        (1e-4, 0.3, 6, 0.61), (2e-4, 0.3, 6, 0.61), (8e-4, 0.41, 6, 0.61), (1.6e-3, 0.41, 6, 0.61)]
    others = earlier_trials(tracker.client, tracker.experiment_id, base, exclude=parents["same"])
    assert sorted(round(k.lam, 10) for k in others) == [2e-4, 1.6e-3]  # a search never recalls its own
