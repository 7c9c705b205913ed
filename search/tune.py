"""The Ray Tune edge of the search: a Tune `Searcher` over any ask/tell strategy, the callback
that hands trial results to the driver, the Tuner run and the final job as a Ray task.

The strategies (Algorithm 1 and the others) never import Ray: `AskTellSearcher` turns Tune's
`suggest(trial_id)` into `ask()` and `on_trial_complete` into `tell(proposal, F)`. The trial itself,
the trainable Tune runs, is `search.trainable`.

A trial or final job with more than one worker (`workers_per_trial`, `final_workers`) is a Ray
Train run driven from here (`search.train_workers`): data-parallel replicas of the same code.

Starting (or joining) the Ray all this runs on is `search.ray_cluster`'s job.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import Searcher

from search.ray_cluster import scoped_env
from search.strategies import WAIT
from search.trainable import RUNNING, trial_dirname, trial_name


class AskTellSearcher(Searcher):
    """Ray Tune `Searcher` over an ask/tell strategy (`search.strategies.base.Strategy` protocol).

    `suggest` returns {"lam", "t", "proposal"} (the proposal's id), None while the strategy waits for
    outstanding results (Tune asks again later) and `Searcher.FINISHED` once it has finished;
    `on_trial_complete` tells the strategy the trial's final `flops_reduction` (an errored trial or a
    missing/NaN F is a failed trial). `proposals` maps every Tune trial id to its proposal's id.
    """

    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def __init__(self, strategy: Any, metric: str = "flops_reduction") -> None:
        super().__init__(metric=metric, mode="min")
        self.strategy = strategy
        self.proposals: dict[str, int] = {}  # Tune trial id -> proposal id
        self._told: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the strategy owns the search space; Tune's metric/mode are not used

    def suggest(self, trial_id: str) -> dict[str, float] | str | None:
        proposal = self.strategy.ask()
        if proposal is None:
            return Searcher.FINISHED
        if proposal is WAIT:
            return None
        self.proposals[trial_id] = proposal.id
        window = self.strategy.window(proposal)
        return {"lam": proposal.lam, "t": proposal.t, "proposal": proposal.id,
                "window": None if window is None else list(window)}  # fmt: skip

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.proposals or trial_id in self._told:
            return  # not ours, or told already
        self._told.add(trial_id)
        result = {} if error or not result else result
        decided = result.get("decided") or None
        value = result.get("forecast") if decided else result.get(self.metric)  # decided: the stable F forecast
        if value is not None and not math.isfinite(float(value)):
            value = None
        self.strategy.tell(self.proposals[trial_id], value, decided=decided)

    def save(self, checkpoint_path: str) -> None:
        """The strategy's `state_dict()` and the trial ids, as JSON, written atomically."""
        state = {"strategy": self.strategy.state_dict(), "proposals": self.proposals, "told": sorted(self._told)}
        tmp = f"{checkpoint_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.strategy.load_state_dict(state["strategy"])
        self.proposals = {k: int(v) for k, v in state["proposals"].items()}
        self._told = set(state["told"])


Handlers = tuple[Callable[[str, dict], None], Callable[[str, dict], None]]


class TrialEvents(tune.Callback):
    """Forwards trial results, in the driver, to plain handlers (MLflow logging, progress lines).

    `make_handlers(*args)` returns `(on_epoch, on_end)`: `on_epoch(trial_id, result)` for every
    per-epoch report, `on_end(trial_id, result)` once per trial with its final report (or, for a
    trial that raised, a failed result built here). Tune pickles its callbacks with the experiment
    and a resumed Tuner gets those copies back, so this holds only the picklable recipe and builds
    the handlers when the experiment starts, in the process that runs it.
    """

    def __init__(self, make_handlers: Callable[..., Handlers], *args: Any) -> None:
        self._make_handlers = make_handlers
        self._args = args
        self._handlers: Handlers | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handlers": None}

    def setup(self, **info: Any) -> None:
        self._handlers = self._make_handlers(*self._args)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        on_epoch, on_end = self._handlers
        if result.get("status") == RUNNING:
            on_epoch(trial.trial_id, result)
        else:
            on_end(trial.trial_id, result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self._handlers[1](trial.trial_id, {
            "lam": trial.config.get("lam"), "t": trial.config.get("t"), "epoch": int(last.get("epoch") or 0),
            "flops_reduction": math.nan, "val_accuracy": last.get("val_accuracy", math.nan), "status": "failed",
            "message": f"trial raised an error (see {trial.error_file or 'its Ray log'})",
        })  # fmt: skip


def run_tuner(
    trainable: Callable,
    searcher: AskTellSearcher,
    *,
    resources: dict[str, float],
    name: str,
    storage_path: str | Path,
    max_trials: int,
    parallel: int = 1,
    callbacks: list | None = None,
    resume: bool = False,
    verbose: int = 0,
    workers: int = 1,
) -> tune.ResultGrid:
    """Run the search's trials through one Tuner (or resume the Tuner saved at storage_path/name).

    `trainable(params)` is wrapped with `resources` per trial; each trial has its own actor, named
    after it (`trial_name`), so Ray's dashboard tells them apart. Progress is the callbacks' one
    line per epoch (search.report); `verbose` >= 1 brings back Tune's table every 30 s.
    """
    param_space = None
    if workers > 1:  # data-parallel trials: the Tune actor drives, its Ray Train workers hold the resources
        from search.train_workers import DRIVER_CPU, worker_share

        param_space = {"worker_resources": worker_share(resources, workers)}
        resources = {"cpu": DRIVER_CPU, "gpu": 0.0}
    trainable = tune.with_resources(trainable, resources)
    if isinstance(trainable, type):  # the dashboard's Class column: not "with_resources.<locals>.ResourceTrainable"
        trainable.__name__ = trainable.__qualname__ = "PolarizedTrial"
    experiment = Path(storage_path).resolve() / name
    if resume:
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=max_trials,
                max_concurrent_trials=parallel,
                reuse_actors=False,  # an actor's repr (its name in the dashboard) is taken when it starts
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(Path(storage_path).resolve()),
                verbose=verbose,
                callbacks=callbacks,
                progress_reporter=tune.CLIReporter(
                    parameter_columns=["lam", "t"],
                    metric_columns={"epoch": "epoch", "flops_reduction": "F", "val_accuracy": "accuracy",
                                    "status": "trial result"},
                    max_report_frequency=30,
                ) if verbose else None,
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    # The legacy output engine is the one that honours the CLIReporter's columns (λ, t, F, accuracy);
    # num_to_keep=1 forces a state snapshot per checkpoint, which Tune warns about when epochs are short.
    # Tune's "operation took 0.7 s" warnings time our own callbacks (MLflow, figures): not news to the user.
    slow = logging.getLogger("ray.tune.utils.util")
    level = slow.level
    slow.setLevel(logging.ERROR)
    try:
        with scoped_env("RAY_AIR_NEW_OUTPUT", "0"), scoped_env("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"):
            return tuner.fit()
    finally:
        slow.setLevel(level)


def restored_searcher(searcher: AskTellSearcher, storage_path: str | Path, name: str) -> AskTellSearcher:
    """`searcher` loaded with the newest state a Tuner saved in storage_path/name (after a resume)."""
    searcher.restore_from_dir(str(Path(storage_path).resolve() / name))
    return searcher


def run_final_job(fn: Callable, config: Any, lam: float, t: float, output_dir: str, *,
                  resources: dict[str, float]) -> Any:  # fmt: skip
    """The final job: fn(config, lam, t, output_dir) as one Ray task, or with `final_workers` > 1
    run_final data-parallel on Ray Train workers sharing `resources` (search.train_workers)."""
    if config.final_workers > 1:
        from search.train_workers import fit_final

        return fit_final(config, lam, t, output_dir, resources)
    return run_remote(fn, config, lam, t, output_dir, resources=resources)


def run_remote(fn: Callable, *args: Any, resources: dict[str, float]) -> Any:
    """fn(*args) as one Ray task with `resources` (the final job), waiting for its result."""
    task = ray.remote(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0), max_calls=1)(fn)
    ref = task.remote(*args)
    try:
        return ray.get(ref)
    except KeyboardInterrupt:
        ray.cancel(ref, force=True)
        raise
