"""The k-ary search strategy ("kary"): k trials at once.

Each round proposes k values of λ inside the bracket (equally spaced, or log-spaced once λl > 0),
narrows the bracket to the pair around the target; all-below rounds probe λu, 2λu, ..., 2^(k-1)λu
(up to λ_high·2^max_widen). Once a λ lands within 2δ, the bracket is narrower than 5 % (F jumps
across the window: a staircase), or the two largest λ give the same F below the target (λ stopped
paying), the t phase proposes k values of t stepping from the current one (t ± t_step·i), then k
interior points of the t bracket. A round is outstanding at once; ask() answers WAIT until all of
it is told. Stopping rules: search.strategies.two_phase.
"""

from __future__ import annotations

from typing import Any

from search.strategies.algorithm1 import T_STEP_EXHAUSTED, UNREACHABLE_HIGH, UNREACHABLE_LOW
from search.strategies.base import Point, Trial, interior_points, register
from search.strategies.two_phase import TwoPhase, informative_trials, is_above


@register
class KAry(TwoPhase):
    """k-ary search: k proposals per round, so a round narrows the λ bracket k+1 times, not twice."""

    name = "kary"
    uses_parallel = True  # k = settings.parallel

    def __init__(self, settings: Any = None, /, *, max_widen: int = 8, lam_rtol: float = 0.05,
                 t_step_min: float | None = None, **fields: Any) -> None:  # fmt: skip
        super().__init__(settings, max_widen, t_step_min, **fields)
        self.k, self.lam_rtol = self.settings.parallel, float(lam_rtol)
        self._s.update(lam_low=self.settings.lam_low, lam_high=self.settings.lam_high, f_low=None, f_high=None,
                       low_tried=False, high_tried=False, probes=None, round_start=0)

    def window(self, proposal: Any) -> tuple[float, float] | None:
        """A λ round sorts its trials by the 2δ window, a t round by the δ window."""
        return self._window(2 * self.delta if self._s["phase"] == "lambda" else self.delta)

    def _propose(self) -> list[Point]:
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
            informative = informative_trials(self._trials, "lam")
            self._lambda_round([tr for tr in self._trials[self._s["round_start"] :] if tr in informative])

    def _lambda_round(self, results: list[Trial]) -> None:
        s, d2 = self._s, 2 * self.delta
        inside = [r for r in results if not r.failed and abs(r.flops_reduction - self.target) <= d2]
        if inside:
            self._start_t(min(inside, key=lambda r: abs(r.flops_reduction - self.target)))
            return
        above = [r for r in results if is_above(r, self.target, d2)]
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
