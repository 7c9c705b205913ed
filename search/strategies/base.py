"""The ask/tell protocol shared by every search strategy (the paper's Algorithm 1 and ours).

A strategy proposes hyper-parameters (λ, t) of polarization pruning (Eq. 1 and Eq. 2) and is told the
FLOPs reduction F that a trial with them reached, until |F − F*| ≤ δ (Algorithm 1's stopping test):

    algo = Algorithm1(target=0.5, delta=0.05)
    while (p := algo.ask()) is not None:
        algo.tell(train_and_measure(*p))
    algo.best

`ask()` returns a proposal `(lam, t)`, `None` once the search has finished, or `WAIT` while every
proposal it can make now depends on results still outstanding. `tell(F, proposal)` gives the result
of one outstanding proposal (the oldest when `proposal` is None); `F` None or NaN is a failed trial,
an outcome like any other. The search is finished when a trial lands within δ of the target
(`converged`), when `max_trials` proposals have all been told, or when the strategy gives up with a
stated `reason`. Pure Python: no torch, no Ray.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

Proposal = tuple[float, float]

CONVERGED = "converged: |F-F*| <= delta"
MAX_TRIALS = "max_trials reached"


class _Signal(enum.Enum):
    WAIT = "wait"

    def __repr__(self) -> str:
        return "WAIT"


WAIT = _Signal.WAIT
"""Returned by `ask()` when nothing can be proposed until an outstanding trial is told."""


@dataclass(frozen=True)
class Trial:
    """One told trial: its (λ, t), the FLOPs reduction it reached (None if it failed), its status."""

    lam: float
    t: float
    flops_reduction: float | None
    status: str  # "ok" or "failed"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_target(target: float, delta: float) -> None:
    """Raise ValueError unless 0 < target < 1 and 0 < delta < target."""
    try:
        ok_target = 0.0 < float(target) < 1.0
        ok_delta = ok_target and 0.0 < float(delta) < float(target)
    except (TypeError, ValueError):
        ok_target = ok_delta = False
    if not ok_target:
        raise ValueError(f"target FLOPs reduction must be in (0, 1), got {target!r}")
    if not ok_delta:
        raise ValueError(f"delta must be in (0, target={target}), got {delta!r}")


def round_t(t: float) -> float:
    """t rounded to 10 decimals, so that t ± 0.1 steps land on the same values when they return."""
    return round(t, 10)


def as_flops(value: float | None) -> float | None:
    """The told FLOPs reduction as a float, or None for a failed trial (None or NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def interior_points(low: float, high: float, k: int) -> list[float]:
    """k points strictly inside (low, high): equally spaced, or log-spaced when low > 0."""
    if low > 0:
        a, b = math.log(low), math.log(high)
        return [math.exp(a + (b - a) * i / (k + 1)) for i in range(1, k + 1)]
    return [low + (high - low) * i / (k + 1) for i in range(1, k + 1)]


class Strategy(ABC):
    """Bookkeeping common to all strategies: outstanding proposals, history, budget and stop reason.

    Subclasses implement `_propose()` (the next proposals, or [] after calling `_finish`) and
    `_observe(trial)` (update their state with one told trial), and name their own state in
    `_extra_state()` / `_load_extra_state()` so that `state_dict()` is enough to resume.
    """

    name = "strategy"

    def __init__(self, target: float, delta: float, max_trials: int = 20) -> None:
        check_target(target, delta)
        if int(max_trials) < 1:
            raise ValueError(f"max_trials must be >= 1, got {max_trials!r}")
        self.target = float(target)
        self.delta = float(delta)
        self.max_trials = int(max_trials)
        self._trials: list[Trial] = []
        self._queue: list[Proposal] = []  # proposed, not yet handed out by ask()
        self._outstanding: list[Proposal] = []  # handed out, not yet told
        self._reason = ""
        self._converged = False

    # -- the protocol ------------------------------------------------------------------------
    def ask(self) -> Proposal | None | _Signal:
        """The next (lam, t) to train, WAIT until outstanding results are told, or None: finished."""
        if self._reason:
            return None
        if not self._queue:
            if not self._ready():
                return WAIT
            budget = self.max_trials - self._n_asked
            if budget <= 0:
                if self._outstanding:
                    return WAIT  # their results may still converge; finished once they are told
                self._finish(MAX_TRIALS)
                return None
            proposals = self._propose()
            if not proposals and not self._reason:
                self._finish("nothing left to propose")
            if self._reason:
                return None
            self._queue = [(float(lam), round_t(t)) for lam, t in proposals[:budget]]
        proposal = self._queue.pop(0)
        self._outstanding.append(proposal)
        return proposal

    def tell(self, flops_reduction: float | None, proposal: Proposal | None = None) -> None:
        """Record the result of an outstanding proposal (the oldest one when `proposal` is None)."""
        lam, t = self._outstanding.pop(self._match(proposal))
        value = as_flops(flops_reduction)
        trial = Trial(lam, t, value, "failed" if value is None else "ok")
        self._trials.append(trial)
        if self._reason:
            return  # a late result of a finished search: recorded, nothing more
        if value is not None and abs(value - self.target) <= self.delta:
            self._finish(CONVERGED, converged=True)
            return
        self._observe(trial)
        if not self._reason and self._n_asked >= self.max_trials and not self._outstanding:
            self._finish(MAX_TRIALS)

    @property
    def best(self) -> tuple[float, float, float] | None:
        """(lam, t, F) of the successful trial closest to the target so far, or None."""
        ok = [tr for tr in self._trials if not tr.failed]
        if not ok:
            return None
        tr = min(ok, key=lambda tr: abs(tr.flops_reduction - self.target))
        return tr.lam, tr.t, tr.flops_reduction

    @property
    def converged(self) -> bool:
        return self._converged

    @property
    def reason(self) -> str:
        """Why the search stopped; "" while it runs."""
        return self._reason

    @property
    def finished(self) -> bool:
        return bool(self._reason)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every told trial, in the order told: {lam, t, flops_reduction, status}."""
        return [tr.as_dict() for tr in self._trials]

    @property
    def trials(self) -> list[Trial]:
        return list(self._trials)

    @property
    def outstanding(self) -> list[Proposal]:
        return list(self._outstanding)

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot; `load_state_dict` on a strategy built with the same arguments resumes."""
        return {
            "strategy": self.name,
            "target": self.target,
            "delta": self.delta,
            "max_trials": self.max_trials,
            "trials": self.history,
            "queue": [list(p) for p in self._queue],
            "outstanding": [list(p) for p in self._outstanding],
            "reason": self._reason,
            "converged": self._converged,
            "state": self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy") != self.name:
            raise ValueError(f"state of strategy {state.get('strategy')!r} cannot load into {self.name!r}")
        if (state["target"], state["delta"]) != (self.target, self.delta):
            raise ValueError("state was saved for another target or delta")
        self.max_trials = int(state["max_trials"])
        self._trials = [Trial(**d) for d in state["trials"]]
        self._queue = [(float(lam), float(t)) for lam, t in state["queue"]]
        self._outstanding = [(float(lam), float(t)) for lam, t in state["outstanding"]]
        self._reason = state["reason"]
        self._converged = bool(state["converged"])
        self._load_extra_state(state["state"])

    # -- for subclasses ----------------------------------------------------------------------
    @abstractmethod
    def _propose(self) -> list[Proposal]:
        """The next proposals; [] after `_finish(reason)` when there is nothing left to try."""

    @abstractmethod
    def _observe(self, trial: Trial) -> None:
        """Update the strategy with one told trial (not called once the search is finished)."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    def _ready(self) -> bool:
        """Whether new proposals may be made now; sequential and round-based: nothing outstanding."""
        return not self._outstanding

    def _finish(self, reason: str, converged: bool = False) -> None:
        self._reason = reason
        self._converged = converged

    @property
    def _n_asked(self) -> int:
        return len(self._trials) + len(self._outstanding)

    def _match(self, proposal: Proposal | None) -> int:
        if not self._outstanding:
            raise ValueError("tell() without an outstanding proposal: call ask() first")
        if proposal is None:
            return 0
        lam, t = proposal
        for i, (o_lam, o_t) in enumerate(self._outstanding):
            if math.isclose(lam, o_lam, rel_tol=1e-9, abs_tol=1e-15) and math.isclose(t, o_t, abs_tol=1e-9):
                return i
        raise ValueError(f"{proposal!r} is not an outstanding proposal: {self._outstanding!r}")
