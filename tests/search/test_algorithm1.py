"""Algorithm 1 against a literal transcription of the paper's pseudo-code, and where the paper never stops."""

from __future__ import annotations

import json
import math
import random

import pytest

from search.strategies.algorithm1 import T_STEP_EXHAUSTED, UNREACHABLE_HIGH, UNREACHABLE_LOW, Algorithm1
from search.strategies.base import CONVERGED, MAX_TRIALS, WAIT


def paper_algorithm1(F, target, delta, limit=200):
    """The box "Algorithm 1" of the paper, line by line, on an oracle F(λ, t).

    Returns (proposals, terminated, free_from): the (λ, t) trained in order; whether the loop ended
    within `limit` trainings; and the index of the first proposal made after the paper entered a
    state it never leaves (its λ bracket narrower than 1e-3 relative, or a t it already trained
    at this λ), from where `Algorithm1` is allowed to differ (len(proposals) if never).
    """
    lam_l, lam_u, t = 0.0, 2.0e-4, 1.2
    proposals, free_from = [], None
    while True:  # do ... while |F - F*| > 2δ
        lam = (lam_l + lam_u) / 2
        proposals.append((lam, t))
        f = F(lam, t)
        if f - target > 2 * delta:
            lam_u = lam
        elif f - target < -2 * delta:
            lam_l = lam
        if not abs(f - target) > 2 * delta:
            break
        if len(proposals) >= limit:
            return proposals, False, free_from if free_from is not None else len(proposals)
        if free_from is None and (lam_u - lam_l < 1e-3 * lam_u or lam_u < 1e-3 * 2.0e-4):
            free_from = len(proposals)
    tried = [t]
    while abs(f - target) > delta:
        if f - target > delta:
            t = t - 0.1
        else:
            t = t + 0.1
        if free_from is None and any(abs(t - u) < 1e-6 for u in tried):
            free_from = len(proposals)
        tried.append(t)
        if len(proposals) >= limit:
            return proposals, False, free_from if free_from is not None else len(proposals)
        proposals.append((lam, t))
        f = F(lam, t)
    return proposals, True, free_from if free_from is not None else len(proposals)


def flat(proposals):
    """[(λ, t), ...] as one list of numbers, for pytest.approx (each number compared relatively)."""
    return [x for pair in proposals for x in pair]


def same(ours, paper):
    return len(ours) == len(paper) and flat(ours) == pytest.approx(flat(paper), rel=1e-9, abs=1e-12)


def drive(algo, F):
    """Run a strategy to its end on oracle F; the proposals in order."""
    proposals = []
    while (p := algo.ask()) is not None:
        assert p is not WAIT
        proposals.append(p.point)
        algo.tell(p, F(*p.point))
    return proposals


def random_oracle(rng: random.Random):
    """A random deterministic F(λ, t): smooth, staircase, rippled or oscillating in t."""
    kind = rng.choice(["smooth", "stairs", "ripple", "oscillating"])
    lam_c = math.exp(rng.uniform(math.log(1e-5), math.log(4e-4)))
    width, amp, bias = rng.uniform(0.5, 4.0), rng.uniform(0.5, 1.0), rng.uniform(-0.1, 0.1)
    t_slope = rng.uniform(1.0, 2.5) if kind == "oscillating" else rng.uniform(0.0, 0.8)
    height, ratio = rng.uniform(0.05, 0.3), rng.uniform(1.3, 3.0)

    def F(lam, t):
        if kind == "stairs":
            base = height * math.floor(max(0.0, math.log(max(lam, 1e-12) / lam_c) / math.log(ratio) + 3))
        else:
            base = amp / (1 + math.exp(-width * math.log(max(lam, 1e-12) / lam_c)))
        if kind == "ripple":
            base += 0.03 * math.sin(7e4 * lam + 11 * t)
        return min(1.0, max(0.0, base + bias + t_slope * (t - 1.2)))

    F.kind = kind
    return F


def test_first_trials_are_the_papers():
    algo = Algorithm1(target=0.5, delta=0.05)
    p = algo.ask()
    assert (p.id, p.lam, p.t) == (0, 1e-4, 1.2)
    assert algo.ask() is WAIT  # sequential: one trial at a time
    algo.tell(p, 0.2)  # far below: λl = 1e-4
    p = algo.ask()
    assert p.id == 1 and p.point == pytest.approx((1.5e-4, 1.2))
    algo.tell(p, 0.8)  # far above: λu = 1.5e-4
    p = algo.ask()
    assert p.point == pytest.approx((1.25e-4, 1.2))
    algo.tell(p, 0.42)  # within 2δ, below the δ-window: t phase, t + 0.1
    p = algo.ask()
    assert p.point == pytest.approx((1.25e-4, 1.3))
    algo.tell(p.id, 0.47)  # a proposal or its id
    assert algo.converged and algo.reason == CONVERGED and algo.ask() is None
    best = algo.best
    assert (best.id, best.lam, best.t, best.flops_reduction) == pytest.approx((3, 1.25e-4, 1.3, 0.47))


def test_matches_the_paper_number_for_number_where_it_terminates():
    rng = random.Random(1234)
    compared = kinds = 0
    seen = set()
    for _ in range(600):
        F = random_oracle(rng)
        target = rng.uniform(0.1, 0.9)
        delta = rng.uniform(0.01, min(0.08, target / 2))
        paper, terminated, free_from = paper_algorithm1(F, target, delta)
        ours = drive(Algorithm1(target=target, delta=delta, max_trials=200), F)
        # Up to where the paper is stuck in a loop it never leaves, the proposals are the same.
        assert same(ours[:free_from], paper[:free_from])
        if terminated and free_from == len(paper):
            assert same(ours, paper)
            compared += 1
            seen.add(F.kind)
        kinds += 1
    assert compared >= 250 and seen == {"smooth", "stairs", "ripple", "oscillating"}


@pytest.mark.parametrize(
    ("F", "target"),
    [
        (lambda lam, t: 0.4 + 1.5 * (t - 1.2) + lam, 0.5),  # F jumps across the δ-window per 0.1 of t
        (lambda lam, t: 0.5 + (0.2 if t > 1.25 else -0.09), 0.5),  # a step in t across the window
    ],
)
def test_oscillation_in_t_ends_where_the_paper_cycles(F, target):
    assert not paper_algorithm1(F, target, 0.05, limit=100)[1]
    algo = Algorithm1(target=target, delta=0.05, max_trials=50)
    proposals = drive(algo, F)
    assert algo.finished and len(proposals) < 50
    assert algo.reason in (CONVERGED, T_STEP_EXHAUSTED)
    ts = [t for _, t in proposals]
    assert len(set(ts)) == len(ts)  # never trains the same t twice
    if not algo.converged:  # the step halved down to t_step/8 between the two sides of the window
        assert algo.reason == T_STEP_EXHAUSTED


def test_oscillation_converges_when_a_finer_t_hits_the_window():
    F = lambda lam, t: 0.4 + 1.5 * (t - 1.2)  # noqa: E731 - the window is at t = 1.2667 ± 0.033
    algo = Algorithm1(target=0.5, delta=0.05, max_trials=50)
    drive(algo, F)
    assert algo.converged and abs(algo.best.flops_reduction - 0.5) <= 0.05


def test_target_beyond_lam_high_widens_after_the_paper_bisection():
    F = lambda lam, t: min(1.0, lam / 1.2e-3)  # noqa: E731 - the window is at λ = 6e-4 > 2e-4
    paper, terminated, free_from = paper_algorithm1(F, 0.5, 0.05, limit=60)
    assert not terminated
    algo = Algorithm1(target=0.5, delta=0.05, max_trials=40)
    ours = drive(algo, F)
    assert same(ours[:free_from], paper[:free_from])  # the paper's 10 bisections first
    assert free_from == 10
    assert same(ours[10:], [(4e-4, 1.2), (8e-4, 1.2), (6e-4, 1.2)])  # probe, probe, bisect
    assert algo.converged and algo.best.flops_reduction == pytest.approx(0.5)


def test_unreachable_above_stops_after_max_widen():
    F = lambda lam, t: 0.0  # noqa: E731 - nothing is ever pruned
    algo = Algorithm1(target=0.5, delta=0.05, max_widen=3, max_trials=50)
    proposals = drive(algo, F)
    assert algo.reason == UNREACHABLE_HIGH and not algo.converged
    assert max(lam for lam, _ in proposals) == pytest.approx(2e-4 * 2**3)
    assert len(proposals) == 10 + 3


def test_unreachable_below_stops_when_lam_reaches_zero():
    F = lambda lam, t: 0.8  # noqa: E731
    algo = Algorithm1(target=0.3, delta=0.05, max_trials=50)
    proposals = drive(algo, F)
    assert algo.reason == UNREACHABLE_LOW and len(proposals) == 10
    assert proposals[-1][0] == pytest.approx(2e-4 / 2**10)


def test_lambda_that_stops_paying_moves_t():
    F = lambda lam, t: min(1.0, 0.32 + 0.25 * (t - 1.2))  # noqa: E731 - λ does nothing, t does
    algo = Algorithm1(target=0.5, delta=0.05, max_trials=40)
    proposals = drive(algo, F)
    assert algo.converged and proposals[-1][1] > 1.2
    assert len(proposals) == 10 + 1 + 6  # bisection, one widening probe, then t up to 1.8


def test_staircase_jump_across_the_window_goes_to_the_t_phase():
    F = lambda lam, t: (0.66 if lam > 1.3e-4 else 0.0) + 0.25 * (t - 1.2)  # noqa: E731
    paper, terminated, free_from = paper_algorithm1(F, 0.5, 0.05, limit=60)
    assert not terminated
    algo = Algorithm1(target=0.5, delta=0.05, max_trials=40)
    ours = drive(algo, F)
    assert same(ours[:free_from], paper[:free_from])
    assert algo.converged and ours[free_from][0] > 1.3e-4  # the t phase on the F = 0.66 side
    assert [t for _, t in ours[free_from:]] == pytest.approx([1.1, 1.0, 0.9, 0.8, 0.7])


def test_failed_trials_are_outcomes():
    F = lambda lam, t: float("nan") if lam >= 1e-4 else lam / 2e-4  # noqa: E731
    algo = Algorithm1(target=0.7, delta=0.05, max_trials=30)
    proposals = drive(algo, F)
    assert proposals[1] == pytest.approx((5e-5, 1.2))  # λ = 1e-4 failed: λu = 1e-4, as for F too high
    statuses = [h["status"] for h in algo.history]
    assert "failed" in statuses and algo.finished
    assert all(h["flops_reduction"] is None for h in algo.history if h["status"] == "failed")
    assert algo.best is not None and not math.isnan(algo.best.flops_reduction)
    algo2 = Algorithm1(target=0.5, delta=0.05)
    algo2.tell(algo2.ask(), None)  # None is a failure too
    assert algo2.history[0]["status"] == "failed" and algo2.best is None


@pytest.mark.parametrize("seed", range(20))
def test_always_stops_within_max_trials(seed):
    rng = random.Random(seed)
    F = random_oracle(rng)
    noise = random.Random(seed + 1000)
    max_trials = rng.randint(1, 25)
    algo = Algorithm1(target=rng.uniform(0.1, 0.9), delta=0.03, max_trials=max_trials)
    proposals = drive(algo, lambda lam, t: F(lam, t) + noise.gauss(0, 0.02))
    assert len(proposals) <= max_trials and algo.finished and algo.ask() is None
    assert algo.reason in (CONVERGED, MAX_TRIALS, T_STEP_EXHAUSTED, UNREACHABLE_HIGH, UNREACHABLE_LOW)
    assert len(algo.history) == len(proposals)


def test_state_dict_resumes_the_same_search():
    F = lambda lam, t: 0.4 + 1.5 * (t - 1.2) + lam * 500  # noqa: E731 - oscillates in t
    reference = drive(Algorithm1(target=0.48, delta=0.02, max_trials=30), F)
    assert len(reference) == 4
    algo = Algorithm1(target=0.48, delta=0.02, max_trials=30)
    proposals = []
    for _ in range(3):
        p = algo.ask()
        proposals.append(p.point)
        algo.tell(p, F(*p.point))
    pending = algo.ask()  # outstanding when the driver dies
    proposals.append(pending.point)
    state = json.loads(json.dumps(algo.state_dict()))
    resumed = Algorithm1(target=0.48, delta=0.02, max_trials=30)
    resumed.load_state_dict(state)
    assert resumed.outstanding == [pending]  # the same proposal, id included
    resumed.tell(pending.id, F(*pending.point))
    proposals += drive(resumed, F)
    assert same(proposals, reference) and resumed.reason


def test_bad_arguments_raise():
    for target, delta in [(0.0, 0.05), (1.0, 0.05), (0.5, 0.0), (0.5, 0.5), (0.5, -0.1)]:
        with pytest.raises(ValueError):
            Algorithm1(target=target, delta=delta)
    with pytest.raises(ValueError):
        Algorithm1(target=0.5, delta=0.05, lam_low=3e-4)
    algo = Algorithm1(target=0.5, delta=0.05)
    with pytest.raises(ValueError):
        algo.tell(0, 0.5)  # nothing outstanding
    p = algo.ask()
    with pytest.raises(ValueError):
        algo.tell(p.id + 1, 0.5)  # not a proposal it made
    algo.tell(p, 0.5)
    with pytest.raises(ValueError):
        algo.tell(p, 0.5)  # told already
