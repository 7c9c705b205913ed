"""Search strategies beyond the paper's Algorithm 1, with the same ask/tell protocol (search.base).

- `KAry` ("kary"): k trials at once. Each round proposes k values of λ inside the bracket (equally
  spaced, or log-spaced once λl > 0), narrows the bracket to the pair around the target; all-below
  rounds probe λu, 2λu, ..., 2^(k-1)λu (up to λ_high·2^max_widen). Once a λ lands within 2δ, the
  bracket is narrower than 5 % (F jumps across the window: a staircase), or the two largest λ give
  the same F below the target (λ stopped paying), the t phase proposes k values of t stepping from
  the current one (t ± t_step·i), then k interior points of the t bracket. A round is outstanding at
  once; ask() answers WAIT until all of it is told.
- `Secant` ("secant"): a model of F over (log λ, t) from the trials so far. On λ: regula falsi on
  log λ between the bracketing trials (Illinois-modified, so that a side cannot stall; bisection
  when the closer side is a plateau or a trial failed); outside a bracket, secant extrapolation on
  log λ (a prior slope of 0.4 per e-fold of λ until two trials show one; steps ×1.5 to ×8, λ up to
  λ_high·2^max_widen, down to max(λ_low, λ_high·1e-3)). When λ stops paying (two λ give the same F
  below the target, the bracket is narrower than 10 %, or λ reaches its cap or floor) it moves t
  with Theorem 3.2's prior: the fraction kept is p = 1/2 − t/4, so F grows by ≈ 1/4 per unit of t,
  refined by the slope the trials at this λ show.
- `OptunaSearch` ("optuna"): Optuna's TPE over (log λ, t) minimising |F − F*| through
  `study.ask()` / `study.tell()`; see its docstring for the search space and storage.

Shared stopping rules: converged when |F − F*| ≤ δ, `max_trials`, "t step exhausted" (the t bracket is
narrower than t_step/8), "t range exhausted" (t would leave [min(−2, t0), max(2, t0)], beyond which
Theorem 3.2's p no longer changes), and for kary "target unreachable: ..." as in Algorithm 1.
A failed trial (None/NaN) counts as "too much regularization" (above the target), unless a trial
at a larger λ (or t) succeeded: then it was an accident and is left out of the brackets.
"""

from __future__ import annotations

import math
from typing import Any

from search.algorithm1 import T_STEP_EXHAUSTED, UNREACHABLE_HIGH, UNREACHABLE_LOW, Algorithm1
from search.base import Proposal, Strategy, Trial, check_target, interior_points, round_t

STRATEGIES = ("algorithm1", "kary", "secant", "optuna")
T_RANGE_EXHAUSTED = "t range exhausted"
T_PRIOR_SLOPE = 0.25  # dF/dt from Theorem 3.2: p = 1/2 - t/4 is the fraction of scaling factors kept
LOG_LAM_PRIOR_SLOPE = 0.4  # dF/dlog λ before two trials show it; issue 6 measured ≈ 0.37 on CPU


def _above(tr: Trial, target: float, margin: float) -> bool:
    return tr.failed or tr.flops_reduction - target > margin


def _informative(pts: list[Trial], key: str) -> list[Trial]:
    """The trials that say something about F along `key` ("lam" or "t"): a failure below a success
    is an accident (retried if proposed again), not too much regularization."""
    top_ok = max((getattr(tr, key) for tr in pts if not tr.failed), default=-math.inf)
    return [tr for tr in pts if not tr.failed or getattr(tr, key) > top_ok]


def _falsi(lo: Trial, hi: Trial, pts: list[Trial], target: float) -> float:
    """Where F crosses the target between lo and hi, as a fraction of the way (Illinois regula falsi).

    When the last n ≥ 2 trials fell on the same side, the residual of the end kept all along is
    halved n − 1 times, so the next trial moves towards it and the bracket cannot stall on one side.
    """
    g_lo, g_hi = lo.flops_reduction - target, hi.flops_reduction - target
    sides = [_above(tr, target, 0.0) for tr in pts]
    n = next((i for i, side in enumerate(reversed(sides)) if side != sides[-1]), len(sides))
    if n >= 2 and sides[-1]:
        g_lo /= 2 ** (n - 1)
    elif n >= 2:
        g_hi /= 2 ** (n - 1)
    return min(max(g_lo / (g_lo - g_hi), 0.05), 0.95)


class _TwoPhase(Strategy):
    """Common ground of kary and secant: the λ range, the t range and the trials at a fixed λ."""

    def __init__(self, target: float, delta: float, lam_low: float, lam_high: float, t: float,
                 t_step: float, max_trials: int, max_widen: int, t_step_min: float | None) -> None:
        super().__init__(target, delta, max_trials)
        if not 0.0 <= lam_low < lam_high or t_step <= 0:
            raise ValueError(f"need 0 <= lam_low < lam_high, t_step > 0; got {lam_low}, {lam_high}, {t_step}")
        self.t_step = float(t_step)
        self.t_step_min = float(t_step / 8 if t_step_min is None else t_step_min)
        self._lam_high0 = float(lam_high)
        self._lam_cap = float(lam_high) * 2 ** int(max_widen)
        self._t_range = (min(-2.0, t), max(2.0, t))
        self._s: dict[str, Any] = {"phase": "lambda", "t0": float(t), "lam": None}

    def _t_points(self) -> list[Trial]:
        return [tr for tr in self._trials if math.isclose(tr.lam, self._s["lam"], rel_tol=1e-12)]

    def _t_bracket(self) -> tuple[Trial | None, Trial | None]:
        """(lo, hi): the trials at λ with the largest t below the δ-window and smallest t above it."""
        pts = _informative(self._t_points(), "t")
        above = [tr for tr in pts if _above(tr, self.target, self.delta)]
        hi = min(above, key=lambda tr: tr.t, default=None)
        below = [tr for tr in pts if tr not in above and (hi is None or tr.t < hi.t)]
        return max(below, key=lambda tr: tr.t, default=None), hi

    def _new_ts(self, ts: list[float]) -> list[float]:
        tried = [tr.t for tr in self._t_points()]
        t_min, t_max = self._t_range
        out: list[float] = []
        for t in (round_t(min(max(t, t_min), t_max)) for t in ts):
            if all(abs(t - u) > 1e-9 for u in tried + out):
                out.append(t)
        if not out:
            self._finish(T_RANGE_EXHAUSTED)
        return out

    def _extra_state(self) -> dict[str, Any]:
        return dict(self._s)

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._s = dict(state)


class KAry(_TwoPhase):
    """k-ary search: k proposals per round, so a round narrows the λ bracket k+1 times, not twice."""

    name = "kary"

    def __init__(self, target: float, delta: float, lam_low: float = 0.0, lam_high: float = 2e-4,
                 t: float = 1.2, t_step: float = 0.1, max_trials: int = 20, *, k: int = 2,
                 max_widen: int = 8, lam_rtol: float = 0.05, t_step_min: float | None = None) -> None:
        super().__init__(target, delta, lam_low, lam_high, t, t_step, max_trials, max_widen, t_step_min)
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        self.k, self.lam_rtol = int(k), float(lam_rtol)
        self._s.update(lam_low=float(lam_low), lam_high=float(lam_high), f_low=None, f_high=None,
                       low_tried=False, high_tried=False, probes=None, round_start=0)

    def _propose(self) -> list[Proposal]:
        s = self._s
        s["round_start"] = len(self._trials)  # nothing is outstanding when a round is proposed
        if s["phase"] == "lambda":
            lams = s["probes"] or interior_points(s["lam_low"], s["lam_high"], self.k)
            return [(lam, s["t0"]) for lam in lams]
        lo, hi = self._t_bracket()
        if lo is not None and hi is not None:
            if hi.t - lo.t < self.t_step_min:
                self._finish(T_STEP_EXHAUSTED)
                return []
            ts = [lo.t + (hi.t - lo.t) * i / (self.k + 1) for i in range(1, self.k + 1)]
        elif lo is not None:
            ts = [lo.t + self.t_step * i for i in range(1, self.k + 1)]
        else:
            ts = [hi.t - self.t_step * i for i in range(1, self.k + 1)]
        return [(s["lam"], t) for t in self._new_ts(ts)]

    def _observe(self, trial: Trial) -> None:
        if self._outstanding or self._queue:
            return  # the round is not complete yet
        if self._s["phase"] == "lambda":
            informative = _informative(self._trials, "lam")
            self._lambda_round([tr for tr in self._trials[self._s["round_start"] :] if tr in informative])

    def _lambda_round(self, results: list[Trial]) -> None:
        s, d2 = self._s, 2 * self.delta
        inside = [r for r in results if not r.failed and abs(r.flops_reduction - self.target) <= d2]
        if inside:
            self._start_t(min(inside, key=lambda r: abs(r.flops_reduction - self.target)))
            return
        above = [r for r in results if _above(r, self.target, d2)]
        if above:
            r = min(above, key=lambda r: r.lam)
            s.update(lam_high=r.lam, f_high=r.flops_reduction, high_tried=True)
        below = [r for r in results if r not in above and (r.lam < s["lam_high"] or not s["high_tried"])]
        if below:
            r = max(below, key=lambda r: r.lam)
            s.update(lam_low=r.lam, f_low=r.flops_reduction, low_tried=True)
        s["probes"] = None
        if not s["high_tried"]:  # nothing above the window yet: probe λu and beyond, doubling
            top = sorted((tr for tr in self._trials if not tr.failed), key=lambda tr: tr.lam)[-2:]
            f_top = [tr.flops_reduction for tr in top]
            if len(top) == 2 and f_top[1] > self.delta and abs(f_top[1] - f_top[0]) < self.delta / 2:
                self._start_t(top[1])  # λ stopped paying below the target: move t
                return
            if s["lam_low"] >= self._lam_cap * (1 - self.lam_rtol):
                self._finish(UNREACHABLE_HIGH)
                return
            first = 0 if s["lam_low"] < s["lam_high"] else 1
            doublings = range(first, first + self.k)
            s["probes"] = sorted({min(s["lam_high"] * 2**j, self._lam_cap) for j in doublings})
            s["lam_high"] = s["probes"][-1]
        elif s["lam_high"] - s["lam_low"] < self.lam_rtol * s["lam_high"] or (
            s["lam_high"] < self.lam_rtol * self._lam_high0
        ):
            if not s["low_tried"]:
                self._finish(UNREACHABLE_LOW)
                return
            ends = [tr for tr in self._trials if tr.lam in (s["lam_low"], s["lam_high"]) and not tr.failed]
            self._start_t(min(ends, key=lambda r: abs(r.flops_reduction - self.target)))

    def _start_t(self, trial: Trial) -> None:
        self._s.update(phase="t", lam=trial.lam)


class Secant(_TwoPhase):
    """A model of F(log λ, t) from the trials so far picks each next trial, one at a time."""

    name = "secant"

    def __init__(self, target: float, delta: float, lam_low: float = 0.0, lam_high: float = 2e-4,
                 t: float = 1.2, t_step: float = 0.1, max_trials: int = 20, *, max_widen: int = 8,
                 lam_rtol: float = 0.1, t_step_min: float | None = None) -> None:
        super().__init__(target, delta, lam_low, lam_high, t, t_step, max_trials, max_widen, t_step_min)
        self.lam_rtol = float(lam_rtol)
        self._lam_low, self._lam_floor = float(lam_low), max(float(lam_low), 1e-3 * lam_high)

    def _propose(self) -> list[Proposal]:
        if self._s["phase"] == "lambda":
            lam = self._next_lam()
            if lam is not None:
                return [(lam, self._s["t0"])]
        t = None if self._reason else self._next_t()
        return [] if self._reason else [(self._s["lam"], t) for t in self._new_ts([t])]

    def _observe(self, trial: Trial) -> None:
        del trial  # the model is refitted from the whole history in _propose

    def _next_lam(self) -> float | None:
        """The next λ (t = t0), or None after switching to the t phase."""
        pts, target = _informative(self._trials, "lam"), self.target
        if not self._trials:
            return (self._lam_low + self._lam_high0) / 2  # the paper's first trial
        above = [tr for tr in pts if _above(tr, target, 0.0)]
        hi = min(above, key=lambda tr: tr.lam, default=None)
        below = [tr for tr in pts if tr not in above and (hi is None or tr.lam < hi.lam)]
        lo = max(below, key=lambda tr: tr.lam, default=None)
        if lo is not None and hi is not None:
            closer = lo if hi.failed or target - lo.flops_reduction < hi.flops_reduction - target else hi
            if hi.lam - lo.lam < self.lam_rtol * hi.lam:
                return self._to_t(closer)
            side = below if closer is lo else above
            frac = 0.5 if hi.failed or self._plateau(closer, side) else _falsi(lo, hi, pts, target)
            if lo.lam > 0:
                return math.exp(math.log(lo.lam) + frac * math.log(hi.lam / lo.lam))
            return lo.lam + frac * (hi.lam - lo.lam)
        if lo is not None:  # every trial below the target: larger λ
            if lo.lam >= self._lam_cap or self._plateau(lo, below):
                return self._to_t(lo)
            return min(lo.lam * self._factor(lo, below, 1.5, 8.0), self._lam_cap)
        if hi.lam <= self._lam_floor * (1 + 1e-9):  # every trial above the target: smaller λ
            return self._to_t(hi)
        return max(hi.lam * self._factor(hi, above, 1 / 8, 1 / 1.5), self._lam_floor)

    def _plateau(self, end: Trial, side: list[Trial]) -> bool:
        """λ stopped paying: another λ on the same side of the target gave the same F (> δ)."""
        if end.failed or end.flops_reduction <= self.delta:
            return False
        return any(not tr.failed and tr.lam != end.lam
                   and abs(tr.flops_reduction - end.flops_reduction) < self.delta / 2 for tr in side)

    def _factor(self, end: Trial, side: list[Trial], low: float, high: float) -> float:
        """λ_next / λ_end outside the bracket: secant on log λ through the nearest two trials, or prior."""
        if end.failed:
            return low
        slope = LOG_LAM_PRIOR_SLOPE
        others = [tr for tr in side if not tr.failed and tr.lam != end.lam and tr.lam > 0]
        if others and end.lam > 0:
            near = min(others, key=lambda tr: abs(math.log(tr.lam / end.lam)))
            observed = (end.flops_reduction - near.flops_reduction) / math.log(end.lam / near.lam)
            slope = observed if observed > self.delta / 4 else slope
        return min(max(math.exp((self.target - end.flops_reduction) / slope), low), high)

    def _to_t(self, trial: Trial) -> None:
        ok = [tr for tr in self._trials if not tr.failed]
        if trial.failed and not ok:
            self._finish("target unreachable: every trial failed")
            return None
        if trial.failed:
            trial = min(ok, key=lambda tr: abs(tr.flops_reduction - self.target))
        self._s.update(phase="t", lam=trial.lam)
        return None

    def _next_t(self) -> float:
        """Regula falsi / bisection on t inside a bracket, else a step from the prior slope 1/4."""
        lo, hi = self._t_bracket()
        pts = self._t_points()
        if lo is not None and hi is not None:
            if hi.t - lo.t < self.t_step_min:
                self._finish(T_STEP_EXHAUSTED)
                return lo.t
            frac = 0.5 if hi.failed else _falsi(lo, hi, pts, self.target)
            return lo.t + frac * (hi.t - lo.t)
        ref = lo or hi
        if ref.failed:
            return ref.t - self.t_step
        slope = T_PRIOR_SLOPE
        ok = sorted((tr for tr in pts if not tr.failed), key=lambda tr: abs(tr.flops_reduction - self.target))
        if len(ok) >= 2 and abs(ok[0].t - ok[1].t) > 1e-9:
            observed = (ok[0].flops_reduction - ok[1].flops_reduction) / (ok[0].t - ok[1].t)
            slope = observed if observed > 0.02 else slope
        step = (self.target - ref.flops_reduction) / slope
        return ref.t + math.copysign(min(max(abs(step), self.t_step / 2), 1.0), step)


class OptunaSearch(Strategy):
    """Optuna's TPE over (log λ, t), minimising |F − F*|, through Optuna's ask-and-tell interface.

    Search space: λ log-uniform over [max(lam_low, lam_high·1e-3), lam_high] (λ = 0 is no
    regularization, so the range stops three decades below λ_high; unlike Algorithm 1 it does not
    widen, so give a λ_high large enough), t uniform over [t − 1, t + 1]. The first trial is the
    paper's ((lam_low + lam_high)/2, t). Up to `parallel` proposals are outstanding at once.
    `storage` (an RDB URL such as "sqlite:///search.db") and `study_name` make the study outlive the
    driver (load_if_exists=True); without them the study is in memory and `load_state_dict` replays
    the told trials into a fresh one. Failed trials are told as TrialState.FAIL.
    """

    name = "optuna"

    def __init__(self, target: float, delta: float, lam_low: float = 0.0, lam_high: float = 2e-4,
                 t: float = 1.2, t_step: float = 0.1, max_trials: int = 20, *, parallel: int = 1,
                 seed: int = 0, storage: str | None = None, study_name: str | None = None) -> None:
        import optuna

        super().__init__(target, delta, max_trials)
        if not 0.0 <= lam_low < lam_high:
            raise ValueError(f"need 0 <= lam_low < lam_high, got {lam_low!r}, {lam_high!r}")
        del t_step  # TPE needs no step
        self.parallel = max(1, int(parallel))
        self._space = {
            "lam": optuna.distributions.FloatDistribution(max(lam_low, lam_high * 1e-3), lam_high, log=True),
            "t": optuna.distributions.FloatDistribution(t - 1.0, t + 1.0),
        }
        self._first = {"lam": (lam_low + lam_high) / 2, "t": float(t)}
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True)
        self._storage = storage
        self._study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                          direction="minimize", load_if_exists=True)
        self._numbers: list[list[float]] = []  # [lam, t, optuna trial number] per outstanding proposal

    def _ready(self) -> bool:
        return len(self._outstanding) < self.parallel

    def _propose(self) -> list[Proposal]:
        if not self._study.trials:
            self._study.enqueue_trial(self._first)
        trial = self._study.ask(self._space)
        lam, t = float(trial.params["lam"]), round_t(trial.params["t"])
        self._numbers.append([lam, t, trial.number])
        return [(lam, t)]

    def _observe(self, trial: Trial) -> None:
        del trial  # TPE keeps its model in the study

    def tell(self, flops_reduction: float | None, proposal: Proposal | None = None) -> None:
        super().tell(flops_reduction, proposal)
        tr, number = self._trials[-1], None
        for i, (lam, t, n) in enumerate(self._numbers):
            if math.isclose(lam, tr.lam, rel_tol=1e-9) and math.isclose(t, tr.t, abs_tol=1e-9):
                number = int(n)
                del self._numbers[i]
                break
        self._tell_study(tr, number)

    def _tell_study(self, tr: Trial, number: int | None) -> None:
        """Tell the study about a trial: its running Optuna trial, or a new finished one if that is gone."""
        import optuna

        value = None if tr.failed else abs(tr.flops_reduction - self.target)
        state = optuna.trial.TrialState.FAIL if tr.failed else optuna.trial.TrialState.COMPLETE
        live = {t.number: t for t in self._study.get_trials(deepcopy=False)}
        if number in live and live[number].state == optuna.trial.TrialState.RUNNING:
            self._study.tell(number, value, state=state)
            return
        params = {"lam": min(max(tr.lam, self._space["lam"].low), self._space["lam"].high),
                  "t": min(max(tr.t, self._space["t"].low), self._space["t"].high)}
        self._study.add_trial(optuna.trial.create_trial(state=state, value=value, params=params,
                                                        distributions=self._space))

    def _extra_state(self) -> dict[str, Any]:
        return {"storage": self._storage, "study_name": self._study.study_name,
                "numbers": [list(n) for n in self._numbers]}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        other_study = state["storage"] and self._study.study_name != state["study_name"]
        if self._storage != state["storage"] or other_study:
            raise ValueError(f"state belongs to study {state['study_name']!r} in {state['storage']!r}")
        self._numbers = [list(n) for n in state["numbers"]]
        if not self._study.trials:  # an in-memory study: rebuild it from the history
            self._numbers = [[lam, t, -1] for lam, t, _ in self._numbers]
            for tr in self._trials:
                self._tell_study(tr, None)


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
