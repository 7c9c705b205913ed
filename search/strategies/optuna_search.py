"""The Optuna search strategy ("optuna"): Optuna's TPE over (log λ, t) minimising |F − F*|.

It goes through `study.ask()` / `study.tell()`; see `OptunaSearch` for the search space and storage.
Optuna is imported when the strategy is built, not with this module.
"""

from __future__ import annotations

from typing import Any

from search.strategies.base import Point, Proposal, Strategy, Trial, register, round_t

PROPOSAL_ATTR = "proposal"  # the user attribute of an Optuna trial that holds its proposal's id


def report_epoch(study: Any, proposal: int, epoch: int, gap: float) -> None:
    """Report |F − F*| after `epoch` of the running trial of `proposal` as an intermediate value
    (`optuna.trial.Trial.report`), so Optuna Dashboard draws the trials' learning curves.

    Called from the driver as epochs arrive, with its own handle on the study's storage; a trial
    that is not running any more (told already) or not found is left alone."""
    import math

    import optuna

    if not math.isfinite(gap):
        return
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if frozen.user_attrs.get(PROPOSAL_ATTR) == proposal:
            optuna.trial.Trial(study, frozen._trial_id).report(gap, epoch)
            return


@register
class OptunaSearch(Strategy):
    """Optuna's TPE over (log λ, t), minimising |F − F*|, through Optuna's ask-and-tell interface.

    Search space: λ log-uniform over [max(lam_low, lam_high·1e-3), lam_high] (λ = 0 is no
    regularization, so the range stops three decades below λ_high; unlike Algorithm 1 it does not
    widen, so give a λ_high large enough), t uniform over [t − 1, t + 1]. The first trial is the
    paper's ((lam_low + lam_high)/2, t). Up to `settings.parallel` proposals are outstanding at once.
    `storage` (an RDB URL such as "sqlite:///search.db") and `study_name` make the study outlive the
    driver (load_if_exists=True); without them the study is in memory and `load_state_dict` replays
    the told trials into a fresh one. Failed trials are told as TrialState.FAIL.
    """

    name = "optuna"
    uses_parallel = True

    def __init__(self, settings: Any = None, /, *, storage: str | None = None, study_name: str | None = None,
                 **fields: Any) -> None:  # fmt: skip
        import optuna

        super().__init__(settings, **fields)
        lam_low, lam_high, t = self.settings.lam_low, self.settings.lam_high, self.settings.t_init
        self.parallel = self.settings.parallel
        self._space = {
            "lam": optuna.distributions.FloatDistribution(max(lam_low, lam_high * 1e-3), lam_high, log=True),
            "t": optuna.distributions.FloatDistribution(t - 1.0, t + 1.0),
        }
        self._first = {"lam": (lam_low + lam_high) / 2, "t": float(t)}
        sampler = optuna.samplers.TPESampler(seed=self.settings.seed, n_startup_trials=5, multivariate=True)
        self._storage = storage
        self._study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                          direction="minimize", load_if_exists=True)
        self._numbers: dict[str, int | None] = {}  # proposal id -> its Optuna trial number, until told

    def _ready(self) -> bool:
        return len(self._outstanding) < self.parallel

    def _propose(self) -> list[Point]:
        if not self._study.trials:
            self._study.enqueue_trial(self._first)
        trial = self._study.ask(self._space)
        self._numbers[str(self._next_id)] = trial.number  # one point per call: it gets the next id
        trial.set_user_attr(PROPOSAL_ATTR, self._next_id)  # how report_epoch finds it from the trial's reports
        return [(float(trial.params["lam"]), round_t(trial.params["t"]))]

    def _observe(self, trial: Trial) -> None:
        del trial  # TPE keeps its model in the study

    def tell(self, proposal: Proposal | int, flops_reduction: float | None, decided: str | None = None) -> None:
        super().tell(proposal, flops_reduction, decided)
        tr = self._trials[-1]
        self._tell_study(tr, self._numbers.pop(str(tr.id), None))

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
        return {"storage": self._storage, "study_name": self._study.study_name, "numbers": dict(self._numbers)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        other_study = state["storage"] and self._study.study_name != state["study_name"]
        if self._storage != state["storage"] or other_study:
            raise ValueError(f"state belongs to study {state['study_name']!r} in {state['storage']!r}")
        self._numbers = dict(state["numbers"])
        if not self._study.trials:  # an in-memory study: rebuild it from the history
            self._numbers = dict.fromkeys(self._numbers)  # its running trials are gone with it
            for tr in self._trials:
                self._tell_study(tr, None)

