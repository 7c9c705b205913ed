"""Common ground of the kary and secant strategies: a λ phase, then a t phase at a fixed λ.

Shared stopping rules: converged when |F − F*| ≤ δ, `max_trials`, "t step exhausted" (the t bracket is
narrower than t_step/8), "t range exhausted" (t would leave [min(−2, t0), max(2, t0)], beyond which
Theorem 3.2's p no longer changes), and for kary "target unreachable: ..." as in Algorithm 1.
A failed trial (None/NaN) counts as "too much regularization" (above the target), unless a trial
at a larger λ (or t) succeeded: then it was an accident and is left out of the brackets.
"""

from __future__ import annotations

import math
from typing import Any

from search.strategies.base import Strategy, Trial, round_t

T_RANGE_EXHAUSTED = "t range exhausted"


def is_above(tr: Trial, target: float, margin: float) -> bool:
    """Whether the trial failed or its F is more than `margin` above the target."""
    return tr.failed or tr.flops_reduction - target > margin


def informative_trials(pts: list[Trial], key: str) -> list[Trial]:
    """The trials that say something about F along `key` ("lam" or "t"): a failure below a success
    is an accident (retried if proposed again), not too much regularization."""
    top_ok = max((getattr(tr, key) for tr in pts if not tr.failed), default=-math.inf)
    return [tr for tr in pts if not tr.failed or getattr(tr, key) > top_ok]


class TwoPhase(Strategy):
    """Common ground of kary and secant: the λ range, the t range and the trials at a fixed λ."""

    def __init__(self, settings: Any, max_widen: int, t_step_min: float | None, **fields: Any) -> None:
        super().__init__(settings, **fields)
        lam_high, t, t_step = self.settings.lam_high, self.settings.t_init, self.settings.t_step
        self.t_step = t_step
        self.t_step_min = float(t_step / 8 if t_step_min is None else t_step_min)
        self._lam_high0 = float(lam_high)
        self._lam_cap = float(lam_high) * 2 ** int(max_widen)
        self._t_range = (min(-2.0, t), max(2.0, t))
        self._s: dict[str, Any] = {"phase": "lambda", "t0": float(t), "lam": None}

    def _t_points(self) -> list[Trial]:
        return [tr for tr in self._trials if math.isclose(tr.lam, self._s["lam"], rel_tol=1e-12)]

    def _t_bracket(self) -> tuple[Trial | None, Trial | None]:
        """(lo, hi): the trials at λ with the largest t below the δ-window and smallest t above it."""
        pts = informative_trials(self._t_points(), "t")
        above = [tr for tr in pts if is_above(tr, self.target, self.delta)]
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

