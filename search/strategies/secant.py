"""The secant search strategy ("secant"): a model of F over (log λ, t) from the trials so far.

On λ: regula falsi on log λ between the bracketing trials (Illinois-modified, so that a side cannot
stall; bisection when the closer side is a plateau or a trial failed); outside a bracket, secant
extrapolation on log λ (a prior slope of 0.4 per e-fold of λ until two trials show one; steps ×1.5
to ×8, λ up to λ_high·2^max_widen, down to max(λ_low, λ_high·1e-3)). When λ stops paying (two λ
give the same F below the target, the bracket is narrower than 10 %, or λ reaches its cap or
floor) it moves t with Theorem 3.2's prior: the fraction kept is p = 1/2 − t/4, so F grows by ≈ 1/4
per unit of t, refined by the slope the trials at this λ show. Stopping rules: search.strategies.two_phase.
"""

from __future__ import annotations

import math
from typing import Any

from search.strategies.algorithm1 import T_STEP_EXHAUSTED
from search.strategies.base import Point, Trial, register
from search.strategies.two_phase import TwoPhase, informative_trials, is_above

T_PRIOR_SLOPE = 0.25  # dF/dt from Theorem 3.2: p = 1/2 - t/4 is the fraction of scaling factors kept
LOG_LAM_PRIOR_SLOPE = 0.4  # dF/dlog λ before two trials show it; issue 6 measured ≈ 0.37 on CPU


def _falsi(lo: Trial, hi: Trial, pts: list[Trial], target: float) -> float:
    """Where F crosses the target between lo and hi, as a fraction of the way (Illinois regula falsi).

    When the last n ≥ 2 trials fell on the same side, the residual of the end kept all along is
    halved n − 1 times, so the next trial moves towards it and the bracket cannot stall on one side.
    """
    g_lo, g_hi = lo.flops_reduction - target, hi.flops_reduction - target
    sides = [is_above(tr, target, 0.0) for tr in pts if not tr.known]  # this search's own, in the order told
    n = next((i for i, side in enumerate(reversed(sides)) if side != sides[-1]), len(sides))
    if n >= 2 and sides[-1]:
        g_lo /= 2 ** (n - 1)
    elif n >= 2:
        g_hi /= 2 ** (n - 1)
    return min(max(g_lo / (g_lo - g_hi), 0.05), 0.95)



@register
class Secant(TwoPhase):
    """A model of F(log λ, t) from the trials so far picks each next trial, one at a time."""

    name = "secant"
    recalls = True  # the model is fitted to every trial, the recalled ones too

    def __init__(self, settings: Any = None, /, *, max_widen: int = 8, lam_rtol: float = 0.1,
                 t_step_min: float | None = None, **fields: Any) -> None:  # fmt: skip
        super().__init__(settings, max_widen, t_step_min, **fields)
        self.lam_rtol = float(lam_rtol)
        lam_low, lam_high = self.settings.lam_low, self.settings.lam_high
        self._lam_low, self._lam_floor = lam_low, max(lam_low, 1e-3 * lam_high)

    def _propose(self) -> list[Point]:
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
        pts, target = informative_trials(self._trials, "lam"), self.target
        if not self._trials:
            return (self._lam_low + self._lam_high0) / 2  # the paper's first trial
        above = [tr for tr in pts if is_above(tr, target, 0.0)]
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
