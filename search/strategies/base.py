"""The ask/tell protocol shared by every search strategy (the paper's Algorithm 1 and ours).

A strategy proposes hyper-parameters (λ, t) of polarization pruning (Eq. 1 and Eq. 2) and is told the
FLOPs reduction F that a trial with them reached, until |F − F*| ≤ δ (Algorithm 1's stopping test):

    algo = Algorithm1(target=0.5, delta=0.05)          # or Algorithm1(SearchSettings(...))
    while (p := algo.ask()) is not None:               # a Proposal: p.id, p.lam, p.t
        algo.tell(p, train_and_measure(p.lam, p.t))
    algo.best

`ask()` returns a `Proposal`, `None` once the search has finished, or `WAIT` while every proposal it
can make now depends on results still outstanding. `tell(proposal, F)` gives the result of one
outstanding proposal (the proposal or its id); `F` None or NaN is a failed trial, an outcome like
any other. The search is finished when a trial lands within δ of the target (`converged`), when
`max_trials` proposals have all been told, or when the strategy gives up with a stated `reason`.
A strategy is built from one `search.settings.SearchSettings`, and registers itself by name
(`@register`). Pure Python: no torch, no Ray.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from search.strategies.records import Point, Proposal, Trial, as_flops, interior_points, round_t

if TYPE_CHECKING:
    from search.settings import SearchSettings

__all__ = ["CONVERGED", "MAX_TRIALS", "WAIT", "Point", "Proposal", "Strategy", "Trial", "as_flops",
           "interior_points", "register", "round_t"]  # fmt: skip

CONVERGED = "converged: |F-F*| <= delta"
MAX_TRIALS = "max_trials reached"

_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make the strategy buildable by its `name` (search.strategies.build)."""
    _REGISTRY[cls.name] = cls
    return cls


class _Signal(enum.Enum):
    WAIT = "wait"

    def __repr__(self) -> str:
        return "WAIT"


WAIT = _Signal.WAIT
"""Returned by `ask()` when nothing can be proposed until an outstanding trial is told."""


class Strategy(ABC):
    """Bookkeeping common to all strategies: outstanding proposals, history, budget and stop reason.

    Subclasses implement `_propose()` (the next points, or [] after calling `_finish`) and
    `_observe(trial)` (update their state with one told trial), and name their own state in
    `_extra_state()` / `_load_extra_state()` so that `state_dict()` is enough to resume.
    """

    name = "strategy"
    uses_parallel = False  # whether `settings.parallel` means anything to this strategy
    recalls = False  # whether `recall` can start this strategy from earlier searches' trials

    def __init__(self, settings: SearchSettings | None = None, /, **fields: Any) -> None:
        """Built from `settings`, or from the fields of one (`target=0.5, delta=0.05, ...`)."""
        from search.settings import SearchSettings

        if settings is None:
            settings = SearchSettings(**{"strategy": self.name, **fields})
        elif fields:
            raise TypeError("give a SearchSettings or its fields, not both")
        if settings.strategy != self.name:
            raise ValueError(f"settings of strategy {settings.strategy!r} given to {self.name!r}")
        self.settings = settings
        self.target = settings.target
        self.delta = settings.delta
        self.max_trials = settings.max_trials
        self._trials: list[Trial] = []
        self._queue: list[Point] = []  # proposed, not yet handed out by ask()
        self._outstanding: list[Proposal] = []  # handed out, not yet told
        self._next_id = 0
        self._reason = ""
        self._converged = False

    @classmethod
    def concurrency(cls, settings: SearchSettings) -> int:
        """How many trials this strategy keeps outstanding at once under `settings`."""
        return settings.parallel if cls.uses_parallel else 1

    # -- the protocol ------------------------------------------------------------------------
    def recall(self, known: Iterable[tuple[float, float, float]]) -> int:
        """Start from trials that earlier searches of the same trainer config trained until F was
        stable, as (λ, t, F): those at t₀ (the λ phase's t) become told trials of this search — never
        proposed again, not counted in `max_trials`, the winner if one is within δ (the search is
        then over before it trains anything). Call before the first `ask()`; returns how many it took."""
        if not self.recalls:
            raise ValueError(f"the {self.name} strategy cannot start from earlier trials")
        if self._trials or self._outstanding:
            raise ValueError("recall() comes before the first ask()")
        t0 = round_t(self.settings.t_init)
        taken = sorted({(float(lam), float(f)) for lam, t, f in known
                        if round_t(t) == t0 and lam > 0 and as_flops(f) is not None})  # fmt: skip
        for i, (lam, f) in enumerate(taken):
            self._trials.append(Trial(-1 - i, lam, t0, f, "ok", known=True))
        inside = [tr for tr in self._trials if abs(tr.flops_reduction - self.target) <= self.delta]
        if inside:
            self._finish(CONVERGED, converged=True)
        elif taken:
            self._recalled()
        return len(taken)

    def ask(self) -> Proposal | None | _Signal:
        """The next proposal to train, WAIT until outstanding results are told, or None: finished."""
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
            points = self._propose()
            if not points and not self._reason:
                self._finish("nothing left to propose")
            if self._reason:
                return None
            self._queue = [(float(lam), round_t(t)) for lam, t in points[:budget]]
        lam, t = self._queue.pop(0)
        proposal = Proposal(self._next_id, lam, t)
        self._next_id += 1
        self._outstanding.append(proposal)
        return proposal

    def window(self, proposal: Proposal) -> tuple[float, float] | None:
        """The F interval whose side is all this strategy needs to know of `proposal`'s trial, asked
        right after `ask()`: a trial whose F is known to land outside it may stop early (issue 13).
        None when early decisions are off. Here: the δ window (only a trial inside it is the answer)."""
        del proposal
        return self._window(self.delta)

    def _window(self, half_width: float) -> tuple[float, float] | None:
        """F* ± half_width, or None when early decisions are off."""
        return (self.target - half_width, self.target + half_width) if self.settings.early_decisions else None

    def tell(self, proposal: Proposal | int, flops_reduction: float | None, decided: str | None = None) -> None:
        """Record the result of an outstanding proposal (given as itself or by its id); `decided`: the
        side of `window(proposal)` a trial stopped early on, its F then the forecast of its stable F."""
        proposal = self._outstanding.pop(self._index(proposal))
        value = as_flops(flops_reduction)
        trial = Trial(proposal.id, proposal.lam, proposal.t, value, "failed" if value is None else "ok",
                      decided if value is not None else None)  # fmt: skip
        self._trials.append(trial)
        if self._reason:
            return  # a late result of a finished search: recorded, nothing more
        if value is not None and trial.decided is None and abs(value - self.target) <= self.delta:
            self._finish(CONVERGED, converged=True)
            return
        self._observe(trial)
        if not self._reason and self._n_asked >= self.max_trials and not self._outstanding:
            self._finish(MAX_TRIALS)

    @property
    def best(self) -> Trial | None:
        """The trial with a stable F closest to the target so far, or None (a trial decided early is
        outside the window the strategy asked about, so never inside δ: never the winner)."""
        ok = [tr for tr in self._trials if not tr.failed and tr.decided is None]
        return min(ok, key=lambda tr: abs(tr.flops_reduction - self.target), default=None)

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
        """Every told trial, in the order told: {id, lam, t, flops_reduction, status}."""
        return [tr.as_dict() for tr in self._trials]

    @property
    def trials(self) -> list[Trial]:
        """The trials this search trained (not those recalled from earlier searches)."""
        return [tr for tr in self._trials if not tr.known]

    @property
    def known(self) -> list[Trial]:
        """The trials recalled from earlier searches (`recall`)."""
        return [tr for tr in self._trials if tr.known]

    @property
    def outstanding(self) -> list[Proposal]:
        return list(self._outstanding)

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot; `load_state_dict` on a strategy built with the same settings resumes."""
        return {
            "strategy": self.name,
            "settings": self.settings.to_dict(),
            "trials": self.history,
            "queue": [list(p) for p in self._queue],
            "outstanding": [asdict(p) for p in self._outstanding],
            "next_id": self._next_id,
            "reason": self._reason,
            "converged": self._converged,
            "state": self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy") != self.name:
            raise ValueError(f"state of strategy {state.get('strategy')!r} cannot load into {self.name!r}")
        saved = state["settings"]
        if (saved["target"], saved["delta"]) != (self.target, self.delta):
            raise ValueError("state was saved for another target or delta")
        self._trials = [Trial(**d) for d in state["trials"]]
        self._queue = [(float(lam), float(t)) for lam, t in state["queue"]]
        self._outstanding = [Proposal(**p) for p in state["outstanding"]]
        self._next_id = int(state["next_id"])
        self._reason = state["reason"]
        self._converged = bool(state["converged"])
        self._load_extra_state(state["state"])

    # -- for subclasses ----------------------------------------------------------------------
    @abstractmethod
    def _propose(self) -> list[Point]:
        """The next (λ, t) points; [] after `_finish(reason)` when there is nothing left to try."""

    @abstractmethod
    def _observe(self, trial: Trial) -> None:
        """Update the strategy with one told trial (not called once the search is finished)."""

    def _recalled(self) -> None:
        """Take the recalled trials (in `self._trials`, none within δ) into the strategy's state;
        a strategy that refits from `self._trials` on every proposal (secant) has nothing to do."""
        return None

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
        return len(self._trials) - len(self.known) + len(self._outstanding)

    def _index(self, proposal: Proposal | int) -> int:
        wanted = proposal.id if isinstance(proposal, Proposal) else int(proposal)
        for i, outstanding in enumerate(self._outstanding):
            if outstanding.id == wanted:
                return i
        raise ValueError(f"proposal {wanted} is not outstanding (outstanding: {[p.id for p in self._outstanding]})")
